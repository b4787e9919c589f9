"""The poller's rules for when a job has ended: never success by absence, never too early."""

from __future__ import annotations

import asyncio

import pytest

from airflow_hpc_provider.dialects.base import Observation
from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobState, JobStatus, WatchedJob
from airflow_hpc_provider.watching.cluster import (
    ClusterPoller,
    JobEnded,
    Notice,
    OutputLines,
    PollerSettings,
    StatusChanged,
    _Subscriber,
    _Track,
)

SETTINGS = PollerSettings(interval_s=5, gap_grace_s=120, missing_grace_s=600)


def make_poller() -> ClusterPoller:
    # The transport is never used here: these tests exercise the rules, not the connection.
    transport = SshTransport(SshTarget(conn_id="rules", host="login.invalid"))
    return ClusterPoller(transport, SlurmDialect(), SETTINGS)


def track() -> tuple[_Track, asyncio.Queue]:
    queue: asyncio.Queue = asyncio.Queue()
    job = _Track(job=WatchedJob(job_id="7", log_path="7.log", cursor_path="7.cursor"))
    job.subscribers.append(_Subscriber(queue))
    return job, queue


def status(state: JobState, native: str | None = None, **kw) -> JobStatus:
    return JobStatus(job_id="7", state=state, native_state=native or state.value, **kw)


def drained(queue: asyncio.Queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def test_a_job_unknown_to_the_scheduler_is_not_over_until_the_grace_period_and_then_it_is_lost() -> None:
    poller, (job, _) = make_poller(), track()
    assert poller._settle(job, Observation(None, final=False), now=1000.0) is None
    assert poller._settle(job, Observation(None, final=False), now=1599.0) is None
    lost = poller._settle(job, Observation(None, final=False), now=1600.0)
    assert lost is not None and lost.state is JobState.LOST and not lost.state.is_success
    assert lost.exit_code is None


def test_seeing_the_job_again_resets_the_missing_clock() -> None:
    poller, (job, _) = make_poller(), track()
    poller._settle(job, Observation(None, final=False), now=1000.0)
    poller._settle(job, Observation(status(JobState.PENDING), final=False), now=1500.0)
    assert poller._settle(job, Observation(None, final=False), now=1700.0) is None


def test_a_terminal_state_accounting_has_not_confirmed_waits_then_is_taken_with_a_warning() -> None:
    poller, (job, queue) = make_poller(), track()
    ended_in_queue = Observation(status(JobState.COMPLETED, exit_code=0), final=False)
    assert poller._settle(job, ended_in_queue, now=0.0) is None
    assert poller._settle(job, ended_in_queue, now=119.0) is None
    taken = poller._settle(job, ended_in_queue, now=120.0)
    assert taken is not None and taken.state is JobState.COMPLETED
    assert any(isinstance(e, Notice) and "never confirmed" in e.message for e in drained(queue))


def test_a_final_observation_ends_the_watch_at_once() -> None:
    poller, (job, _) = make_poller(), track()
    final = poller._settle(job, Observation(status(JobState.FAILED, exit_code=3), final=True), now=0.0)
    assert final is not None and final.exit_code == 3


def test_preempted_must_be_seen_twice_because_a_requeued_job_passes_through_it() -> None:
    poller, (job, _) = make_poller(), track()
    preempted = Observation(status(JobState.PREEMPTED), final=True)
    assert poller._settle(job, preempted, now=0.0) is None
    assert poller._settle(job, Observation(status(JobState.PENDING), final=False), now=5.0) is None
    assert poller._settle(job, preempted, now=10.0) is None
    assert poller._settle(job, preempted, now=15.0) is not None


def test_an_unknown_native_state_is_reported_once_and_the_job_is_still_watched() -> None:
    poller, (job, queue) = make_poller(), track()
    odd = Observation(status(JobState.UNKNOWN, "SOMETHING_NEW"), final=False)
    assert poller._settle(job, odd, now=0.0) is None
    assert poller._settle(job, odd, now=5.0) is None
    notices = [e for e in drained(queue) if isinstance(e, Notice)]
    assert len(notices) == 1 and "SOMETHING_NEW" in notices[0].message


def test_state_changes_are_announced_once_each_with_their_reason() -> None:
    poller, (job, queue) = make_poller(), track()
    for state, reason in (
        (JobState.PENDING, "Priority"),
        (JobState.PENDING, "Priority"),
        (JobState.PENDING, "Resources"),
    ):
        poller._settle(job, Observation(status(state, reason=reason), final=False), now=0.0)
    changes = [e.status.describe() for e in drained(queue) if isinstance(e, StatusChanged)]
    assert changes == ["PENDING (Priority)", "PENDING (Resources)"]


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


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        (Observation(None, final=False), None),
        (Observation(status(JobState.RUNNING), final=False), None),
    ],
)
def test_nothing_but_a_final_observation_or_a_grace_period_ends_a_watch(observation, expected) -> None:
    poller, (job, _) = make_poller(), track()
    assert poller._settle(job, observation, now=0.0) is expected
    assert not any(isinstance(e, JobEnded) for e in drained(job.subscribers[0].queue))


def test_the_same_trouble_poll_after_poll_is_reported_once_and_again_when_it_changes() -> None:
    poller = make_poller()
    down = "sacct exited 1: 'Unable to contact slurmdbd'"
    assert poller._fresh([down]) == [down]
    assert poller._fresh([down]) == []
    assert poller._fresh([]) == []
    assert poller._fresh([down]) == [down]
