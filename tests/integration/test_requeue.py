"""Requeued Slurm jobs: a requeued job's output reaches the task log, every line of both runs once,
in order; a tenant whose allocation is requeued ends instead of being watched forever.

Slurm starts a requeued job again with the same output file (appended to: the provider submits
with ``--open-mode=append``; by default Slurm would truncate it). The trigger announces the new
run with a marker line and never repeats the first run's lines. A requeued allocation starts its
tmux server again, without the sessions of the tenants it had.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import uuid
from collections.abc import Iterator

import pytest

from airflow_hpc_provider.jobs import JobKey
from tests.integration import cluster
from tests.integration.test_slurm_tenant import book, outcome, release, start, task_key
from tests.integration.test_slurm_trigger import collected, submit

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]

SECOND_RUN_LINES = 20
REQUEUING_JOB = (
    'if [ "${SLURM_RESTART_COUNT:-0}" -eq 0 ]; then\n'
    '  for i in $(seq 1 1000); do echo "run 1 line $i"; sleep 0.2; done\n'
    "else\n"
    f'  for i in $(seq 1 {SECOND_RUN_LINES}); do echo "run 2 line $i"; done\n'
    "fi\n"
)
RUN_LINE = re.compile(r"^run (\d) line (\d+)$")


async def test_scontrol_requeue_of_a_running_job_streams_both_runs_once_in_order_with_a_run_marker(
    slurm_connection: str,
) -> None:
    key = JobKey.for_task_instance("requeue", "job", uuid.uuid4().hex, -1, 1)
    trigger = await submit(slurm_connection, REQUEUING_JOB, key)
    log = collected(trigger)
    events = trigger.run()
    watching = asyncio.ensure_future(anext(events))
    try:
        await log.wait_for("^run 1 line 5$", timeout_s=120)
        job = shlex.quote(trigger.job_id)
        # Requeued jobs wait about two minutes before they may start again; a user may say now.
        cluster.ssh(f"scontrol requeue {job} && sleep 3 && scontrol update jobid={job} StartTime=now")
        payload = (await asyncio.wait_for(watching, 180)).payload
    finally:
        watching.cancel()
        await events.aclose()

    assert payload["kind"] == "ended" and payload["status"]["state"] == "COMPLETED", payload
    runs = [(int(m.group(1)), int(m.group(2))) for line in log.lines if (m := RUN_LINE.match(line))]
    first = [n for run, n in runs if run == 1]
    second = [n for run, n in runs if run == 2]
    assert first == list(range(1, len(first) + 1)) and len(first) >= 5, first
    assert second == list(range(1, SECOND_RUN_LINES + 1)), second
    assert runs == [(1, n) for n in first] + [(2, n) for n in second], "the runs interleave"
    marker = f"--- run 2 of job {trigger.job_id} (requeued) ---"
    assert log.lines.count(marker) == 1, log.lines
    assert log.lines.index(marker) < log.lines.index("run 2 line 1")
    assert log.lines.index(marker) > log.lines.index(f"run 1 line {first[-1]}")


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
