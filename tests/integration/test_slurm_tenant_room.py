"""Tenants started with ``cpus=`` share an allocation's memory, so the ones whose CPUs fit run at once.

Against the real cluster: a ``cpus=4`` allocation with 400 MiB, tenants of ``cpus=1`` each. Every
tenant prints its own start and end times (``date`` on the allocation's node), which is what proves
they overlapped; a fifth tenant must wait for a CPU and says so in its log.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from airflow_hpc_provider.dialects.slurm_allocation import AllocationSpec
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR
from airflow_hpc_provider.hooks.slurm_tenant import book_allocation, find_allocation
from airflow_hpc_provider.jobs import JobSpec, Resources
from tests.integration.test_slurm_tenant import collected, outcome, release, start, task_key, transport

pytestmark = [pytest.mark.cluster]

CPUS, MEMORY_MB = 4, 400
# Long enough that the fifth tenant is launched while the first four still run, on a busy machine.
TENANT = (
    'echo "start $(date +%s.%N)"\n'
    # The step's own resources, as slurmctld holds them: 'TRES=cpu=1,mem=100M,node=1'.
    'scontrol show step "$SLURM_JOB_ID.$SLURM_STEP_ID" | grep -o "TRES=[^ ]*"\n'
    'sleep 12; echo "end $(date +%s.%N)"'
)


async def book_four_cpus(reservation: str) -> str:
    spec = AllocationSpec(
        reservation=reservation,
        job=JobSpec(
            command="",
            job_name=reservation,
            resources=Resources(cpus=CPUS, memory_mb=MEMORY_MB, time_limit=timedelta(minutes=10), account="myacct"),
        ),
    )
    link = transport()
    try:
        found = await book_allocation(link, spec, log_dir=DEFAULT_LOG_DIR)
        for _ in range(240):
            found = await find_allocation(link, reservation)
            if found.running:
                break
            await asyncio.sleep(0.5)
    finally:
        await link.close()
    assert found.running and found.job_id is not None, f"allocation {reservation} never ran: {found}"
    return found.job_id


def times(lines: list[str], word: str) -> float:
    (line,) = [line for line in lines if line.startswith(word + " ")]
    return float(line.split()[1])


async def test_four_cpus_1_tenants_run_side_by_side_in_a_cpus_4_allocation_and_a_fifth_waits_for_room(
    slurm_connection: str,
) -> None:
    reservation = f"it-room-{uuid.uuid4().hex[:8]}"
    await book_four_cpus(reservation)
    try:
        four = [await start(reservation, TENANT, task_key(f"side-{i}"), cpus=1) for i in range(CPUS)]
        logs = [collected(trigger) for trigger in four]
        running = [asyncio.create_task(outcome(trigger, timeout_s=180)) for trigger in four]
        # All four have started (each said so from inside its step) before the fifth is launched.
        await asyncio.gather(*(log.wait_for("^start ", timeout_s=120) for log in logs))
        fifth = await start(reservation, TENANT, task_key("fifth"), cpus=1)
        fifth_log = collected(fifth)
        fifth_payload = await outcome(fifth, timeout_s=180)
        payloads = await asyncio.gather(*running)
    finally:
        await release(reservation)

    assert [p["status"]["state"] for p in [*payloads, fifth_payload]] == ["COMPLETED"] * 5, payloads
    starts = [times(log.lines, "start") for log in logs]
    ends = [times(log.lines, "end") for log in logs]
    # They overlapped: the last to start began before the first to end had finished.
    assert max(starts) < min(ends), list(zip(starts, ends, strict=True))
    # Each step had its share of the allocation's memory: 400 MiB per 4 CPUs, times 1 CPU.
    for log in logs:
        assert f"TRES=cpu=1,mem={MEMORY_MB // CPUS}M,node=1" in log.lines, log.lines
    # The fifth waited for a CPU, said so in its own log, and ran once one was free.
    waiting = [line for line in fifth_log.lines if line.startswith("airflow-hpc: waiting for room")]
    assert waiting and "asks for 1 CPU(s) and 100 MiB" in waiting[0], fifth_log.lines
    assert any("step creation temporarily disabled" in line for line in fifth_log.lines)
    assert "airflow-hpc: room found; the tenant starts" in fifth_log.lines
    assert times(fifth_log.lines, "start") >= min(ends)
