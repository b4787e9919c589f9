"""Requeued Slurm jobs: a requeued job's output reaches the task log, every line of both runs once,
in order; a tenant whose allocation is requeued ends instead of being watched forever.

Slurm starts a requeued job again with the same output file (appended to: the provider submits
with ``--open-mode=append``; by default Slurm would truncate it). The job marks its new run with a
marker line at the byte where the run begins, however the polls fall, and the trigger never
repeats the first run's lines. A requeued allocation starts its
tmux server again, without the sessions of the tenants it had.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
import uuid
from collections.abc import Iterator

import pytest

from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
from tests.integration import cluster
from tests.integration.test_slurm_tenant import book, outcome, release, start, task_key
from tests.integration.test_slurm_trigger import collected, first_event, stop_like_a_triggerer, submit

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]

SECOND_RUN_LINES = 20
SECOND_RUN = f'  for i in $(seq 1 {SECOND_RUN_LINES}); do echo "run 2 line $i"; done\n'
# The first run writes fast, so it always wrote more after the last poll read its log.
REQUEUING_JOB = (
    'if [ "${SLURM_RESTART_COUNT:-0}" -eq 0 ]; then\n'
    '  for i in $(seq 1 4000); do echo "run 1 line $i"; sleep 0.05; done\n'
    f"else\n{SECOND_RUN}fi\n"
)
# The first run is cut mid-line: its last line never ends.
CUT_MID_LINE_JOB = (
    'if [ "${SLURM_RESTART_COUNT:-0}" -eq 0 ]; then\n'
    '  for i in $(seq 1 5); do echo "run 1 line $i"; done; printf "run 1 unfinished"; sleep 300\n'
    f"else\n{SECOND_RUN}fi\n"
)
RUN_LINE = re.compile(r"^run (\d) line (\d+)$")
# A poll interval the requeue and the new run's start fit in: no poll sees the job between its runs.
LONG_POLL_INTERVAL_S = 20


def requeue_and_start_now(job_id: str) -> None:
    job = shlex.quote(job_id)
    # Requeued jobs wait about two minutes before they may start again; a user may say now. A run
    # started in the same second as the requeue is killed ("Job credential revoked"): 3 s apart.
    cluster.ssh(f"scontrol requeue {job} && sleep 3 && scontrol update jobid={job} StartTime=now")


def assert_both_runs_once_in_order_with_the_marker_between(lines: list[str], job_id: str) -> list[int]:
    runs = [(int(m.group(1)), int(m.group(2))) for line in lines if (m := RUN_LINE.match(line))]
    first = [n for run, n in runs if run == 1]
    second = [n for run, n in runs if run == 2]
    assert first == list(range(1, len(first) + 1)) and len(first) >= 5, first
    assert second == list(range(1, SECOND_RUN_LINES + 1)), second
    assert runs == [(1, n) for n in first] + [(2, n) for n in second], "the runs interleave"
    marker = f"--- run 2 of job {job_id} (requeued) ---"
    assert lines.count(marker) == 1, lines
    assert lines.index(marker) < lines.index("run 2 line 1")
    assert lines.index(marker) > lines.index(f"run 1 line {first[-1]}")
    return first


async def test_scontrol_requeue_of_a_running_job_streams_both_runs_once_in_order_with_a_run_marker(
    slurm_connection: str,
) -> None:
    """The requeue and the new run's start fall between two polls: no poll sees the job between
    its runs, and the first run wrote on after the last read of its output."""
    key = JobKey.for_task_instance("requeue", "job", uuid.uuid4().hex, -1, 1)
    trigger = await submit(slurm_connection, REQUEUING_JOB, key, poll_interval=LONG_POLL_INTERVAL_S)
    log = collected(trigger)
    events = trigger.run()
    began = time.monotonic()
    watching = asyncio.ensure_future(anext(events))
    try:
        await log.wait_for("^run 1 line 5$", timeout_s=120)
        # Right after a poll that came once the early polls of a new watch (1, 2, 4, 8, 16 s) are
        # nearly over: the next one is a whole interval later.
        while True:
            log.changed.clear()
            await asyncio.wait_for(log.changed.wait(), 2 * LONG_POLL_INTERVAL_S)
            if time.monotonic() - began >= 13:
                break
        await asyncio.to_thread(requeue_and_start_now, trigger.job_id)
        payload = (await asyncio.wait_for(watching, 180)).payload
    finally:
        watching.cancel()
        await events.aclose()

    assert payload["kind"] == "ended" and payload["status"]["state"] == "COMPLETED", payload
    first = assert_both_runs_once_in_order_with_the_marker_between(log.lines, trigger.job_id)
    # The case this test is for: no poll saw the job queued again between its runs.
    queued = [i for i, line in enumerate(log.lines) if re.search(r"\b(PENDING|REQUEUED)\b", line)]
    assert all(i < log.lines.index("run 1 line 1") for i in queued), log.lines
    assert len(first) > 5, "the first run was requeued before it wrote on"


async def test_a_trigger_restarted_across_a_requeue_resumes_with_the_marker_between_the_runs_and_a_cut_line_apart(
    slurm_connection: str,
) -> None:
    """The triggerer is down while the job is requeued, runs again and ends; its first run ended
    mid-line. The new trigger resumes from the cursor records on the cluster."""
    key = JobKey.for_task_instance("requeue", "restart", uuid.uuid4().hex, -1, 1)
    trigger = await submit(slurm_connection, CUT_MID_LINE_JOB, key)
    first_log = collected(trigger)
    running = asyncio.create_task(first_event(trigger))
    await first_log.wait_for("^run 1 line 5$", timeout_s=120)
    await stop_like_a_triggerer(running)
    await asyncio.to_thread(requeue_and_start_now, trigger.job_id)
    assert await asyncio.to_thread(cluster.wait_for, trigger.job_id, {"COMPLETED"}, 120) == "COMPLETED"

    _, kwargs = trigger.serialize()
    reborn = SlurmJobTrigger(**json.loads(json.dumps(kwargs)))
    second_log = collected(reborn)
    payload = await first_event(reborn)

    assert payload["kind"] == "ended" and payload["status"]["state"] == "COMPLETED", payload
    lines = first_log.lines + second_log.lines
    assert_both_runs_once_in_order_with_the_marker_between(lines, trigger.job_id)
    marker = lines.index(f"--- run 2 of job {trigger.job_id} (requeued) ---")
    # The marker is a line of its own. (slurmstepd appends "slurmstepd-<node>: error: *** JOB <id> ON
    # <node> CANCELLED AT <time> DUE TO JOB REQUEUE ***" to the output file, after the unfinished line.)
    assert lines[marker - 1].startswith("run 1 unfinished"), lines


@pytest.fixture
def allocation(slurm_connection: str) -> Iterator[str]:
    name = f"it-requeue-{uuid.uuid4().hex[:8]}"
    asyncio.run(book(name))
    yield name
    asyncio.run(release(name))


async def test_a_tenant_whose_allocation_is_requeued_fails_with_that_reason_instead_of_running_forever(
    allocation: str,
) -> None:
    trigger = await start(allocation, 'echo "working"; sleep 300', task_key("requeued"))
    log = collected(trigger)
    running = asyncio.ensure_future(outcome(trigger, timeout_s=120))
    job = shlex.quote(trigger.tenant_id.split(":")[0])
    try:
        await log.wait_for("^working$")
        cluster.ssh(f"scontrol requeue {job}")  # preemption with requeue does the same
        payload = await asyncio.wait_for(running, 120)
    finally:
        running.cancel()
        # Released by id too: a requeued allocation may be between states the release looks for.
        cluster.ssh(f"scancel {job}", check=False)
    assert payload["kind"] == "ended" and payload["status"]["state"] == "FAILED", payload
    assert "was requeued" in payload["status"]["reason"]
