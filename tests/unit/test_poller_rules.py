"""The SSH cluster poller's own rules: output in whole lines, trouble reported once.

When a job has ended is decided by the engine's absence rules: tests/unit/test_absence_rules.py."""

from __future__ import annotations

import asyncio

from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import WatchedJob
from airflow_hpc_provider.watching.cluster import ClusterPoller, PollerSettings
from airflow_hpc_provider.watching.cluster_tracks import Subscriber, Track
from airflow_hpc_provider.watching.events import OutputLines

SETTINGS = PollerSettings(interval_s=5, gap_grace_s=120, missing_grace_s=600)


def make_poller() -> ClusterPoller:
    # The transport is never used here: these tests exercise the rules, not the connection.
    transport = SshTransport(SshTarget(conn_id="rules", host="login.invalid"))
    return ClusterPoller(transport, SlurmDialect(), SETTINGS)


def track() -> tuple[Track, asyncio.Queue]:
    queue: asyncio.Queue = asyncio.Queue()
    job = Track(job=WatchedJob(job_id="7", log_path="7.log", cursor_path="7.cursor"))
    job.subscribers.append(Subscriber(queue))
    return job, queue


def drained(queue: asyncio.Queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def test_output_is_delivered_in_whole_lines_and_the_partial_rest_is_kept_for_later() -> None:
    poller, (job, queue) = make_poller(), track()
    poller._deliver_output(job, b"first\nsec", end=9)
    poller._deliver_output(job, b"ond\nthird\n", end=19)
    lines = [line for e in drained(queue) if isinstance(e, OutputLines) for line in e.lines]
    assert lines == ["first", "second", "third"]
    assert job.offset == 19 and job.partial == b""


def test_undecodable_output_is_shown_with_replacement_characters_not_dropped() -> None:
    poller, (job, queue) = make_poller(), track()
    poller._deliver_output(job, b"caf\xe9\n", end=5)
    (event,) = drained(queue)
    assert event == OutputLines(("caf\ufffd",))


def test_the_same_trouble_poll_after_poll_is_reported_once_and_again_when_it_changes() -> None:
    poller = make_poller()
    down = "sacct exited 1: 'Unable to contact slurmdbd'"
    assert poller._fresh([down]) == [down]
    assert poller._fresh([down]) == []
    assert poller._fresh([]) == []
    assert poller._fresh([down]) == [down]
