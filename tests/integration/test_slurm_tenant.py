"""Tenants inside one Slurm allocation, against the real cluster (cgroup process tracking, tmux, sshd).

Triggers are driven as Airflow's TriggerRunner drives them (see test_slurm_trigger.py); the example
DAG runs under ``airflow dags test``. Allocations are small (1 CPU, minutes) and released at the end.
"""

from __future__ import annotations

import asyncio
import base64
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest

from airflow_hpc_provider.dialects import slurm_allocation, slurm_tenant
from airflow_hpc_provider.dialects.slurm_allocation import AllocationSpec
from airflow_hpc_provider.dialects.slurm_tenant import TenantSpec
from airflow_hpc_provider.errors import AllocationError
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR, SlurmHook
from airflow_hpc_provider.hooks.slurm_tenant import (
    book_allocation,
    find_allocation,
    launch_tenant,
    release_allocation,
)
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec, Resources
from airflow_hpc_provider.triggers.slurm_tenant import SlurmTenantTrigger
from tests.integration import cluster
from tests.integration.conftest import EXAMPLE_DAGS
from tests.integration.dags.slurm_scenarios import NASTY_VALUES
from tests.integration.test_slurm_trigger import collected, stop_like_a_triggerer

pytestmark = [pytest.mark.cluster]


def transport() -> SshTransport:
    return SshTransport(SlurmHook("slurm_local").get_target())


async def book(reservation: str, *, minutes: int = 10, lead_s: int | None = None) -> str:
    spec = AllocationSpec(
        reservation=reservation,
        job=JobSpec(
            command="",
            job_name=reservation,
            resources=Resources(cpus=1, memory_mb=256, time_limit=timedelta(minutes=minutes), account="myacct"),
        ),
        persistent_lead_s=lead_s,
    )
    link = transport()
    try:
        found = await book_allocation(link, spec, log_dir=DEFAULT_LOG_DIR)
        for _ in range(120):
            found = await find_allocation(link, reservation)
            if found.running:
                break
            await asyncio.sleep(0.5)
    finally:
        await link.close()
    assert found.running and found.job_id is not None, f"allocation {reservation} never ran: {found}"
    return found.job_id


async def release(reservation: str) -> tuple[str, ...]:
    link = transport()
    try:
        return (await release_allocation(link, reservation)).job_ids
    finally:
        await link.close()


@pytest.fixture
def reservation(slurm_connection: str) -> Iterator[str]:
    """A fresh 1-CPU allocation for one test, released afterwards whatever happened."""
    name = f"it-tenants-{uuid.uuid4().hex[:8]}"
    asyncio.run(book(name))
    yield name
    asyncio.run(release(name))


def task_key(task: str, try_number: int = 1, run: str | None = None) -> JobKey:
    return JobKey.for_task_instance("tenant_tests", task, run or uuid.uuid4().hex, -1, try_number)


async def start(reservation: str, command: str, key: JobKey, **spec: object) -> SlurmTenantTrigger:
    """Launch as the operator does and return the trigger it would defer to."""
    link = transport()
    try:
        launched = await launch_tenant(
            link,
            reservation,
            TenantSpec(command=command, **spec),
            key=key,
            log_dir=DEFAULT_LOG_DIR,  # type: ignore[arg-type]
        )
    finally:
        await link.close()
    assert launched.word == "STARTED", launched
    assert launched.allocation_id is not None and launched.try_number is not None
    tenant = slurm_tenant.tenant_id(launched.allocation_id, key, launched.try_number)
    return SlurmTenantTrigger("slurm_local", tenant, DEFAULT_LOG_DIR, poll_interval=1)


async def outcome(trigger: SlurmTenantTrigger, timeout_s: float = 90) -> dict:
    events: AsyncIterator = trigger.run()
    try:
        async with asyncio.timeout(timeout_s):
            event = await anext(events)
    finally:
        await events.aclose()
    return event.payload


def allocation_of(trigger: SlurmTenantTrigger) -> str:
    return trigger.tenant_id.split(":")[0]


def allocation_state(job_id: str) -> str:
    return cluster.ssh(f"squeue -h -t all -j {shlex.quote(job_id)} -o %T").strip()


async def test_several_tenants_share_one_allocation_run_in_parallel_and_end_with_their_exit_codes(
    reservation: str,
) -> None:
    marker = f"/tmp/airflow-hpc-tenant-{uuid.uuid4().hex}"
    # Each of these two waits for the other's file: they pass only if they really run at once.
    pair = (
        'touch "{me}"; for i in $(seq 1 60); do [ -e "{other}" ] && break; sleep 0.25; done\n'
        '[ -e "{other}" ] && echo "{name} saw its partner" || {{ echo "{name} ran alone"; exit 9; }}'
    )
    first = await start(reservation, pair.format(me=marker + ".a", other=marker + ".b", name="A"), task_key("a"))
    second = await start(reservation, pair.format(me=marker + ".b", other=marker + ".a", name="B"), task_key("b"))
    inside = await start(
        reservation,
        'echo "job=$SLURM_JOB_ID"; grep -E "freezer|memory" /proc/self/cgroup\n'
        'for i in 1 2 3 4; do echo "tick $i"; sleep 0.5; done',
        task_key("inside"),
    )
    failing = await start(reservation, 'echo "about to fail" >&2; exit 3', task_key("fail"))
    stepped = await start(reservation, 'echo "step=$SLURM_STEP_ID cpus=$SLURM_CPUS_PER_TASK"', task_key("cpus"), cpus=1)
    triggers = [first, second, inside, failing, stepped]
    logs = [collected(trigger) for trigger in triggers]
    payloads = await asyncio.gather(*(outcome(trigger) for trigger in triggers))

    states = [(p["kind"], p["status"]["state"], p["status"]["exit_code"]) for p in payloads]
    assert states == [
        ("ended", "COMPLETED", 0),
        ("ended", "COMPLETED", 0),
        ("ended", "COMPLETED", 0),
        ("ended", "FAILED", 3),
        ("ended", "COMPLETED", 0),
    ], payloads
    assert "A saw its partner" in logs[0].lines and "B saw its partner" in logs[1].lines
    job_id = allocation_of(inside)
    assert all(allocation_of(trigger) == job_id for trigger in triggers)
    # Inside the allocation: its job id, and its processes in the allocation's batch cgroup.
    assert f"job={job_id}" in logs[2].lines
    cgroups = [line for line in logs[2].lines if "cgroup" in line or "/slurm" in line]
    assert cgroups and all(f"/job_{job_id}/step_batch" in line for line in cgroups), logs[2].lines
    assert [line for line in logs[2].lines if line.startswith("tick ")] == [f"tick {i}" for i in range(1, 5)]
    assert "about to fail" in logs[3].lines  # stderr goes to the tenant's log too
    # With cpus=, the command ran as a job step of its own with that many CPUs.
    assert any(line.startswith("step=") and line != "step=" and "cpus=1" in line for line in logs[4].lines)
    assert allocation_state(job_id) == "RUNNING"


async def test_stopping_one_tenant_leaves_its_neighbour_and_the_allocation_running(reservation: str) -> None:
    doomed = await start(reservation, 'echo "doomed started"; sleep 300; echo "never printed"', task_key("doomed"))
    neighbour = await start(
        reservation, 'echo "neighbour started"; sleep 6; echo "neighbour done"', task_key("neighbour")
    )
    doomed_log, neighbour_log = collected(doomed), collected(neighbour)
    running = asyncio.create_task(outcome(doomed))
    neighbour_outcome = asyncio.create_task(outcome(neighbour))
    await doomed_log.wait_for("^doomed started$")
    await stop_like_a_triggerer(running)
    await doomed.on_kill()  # what a user's "mark failed" does
    assert any("Stopping Slurm tenant" in line for line in doomed_log.lines)

    stopped = await outcome(SlurmTenantTrigger(**doomed.serialize()[1]))
    assert stopped["status"]["state"] == "CANCELLED" and stopped["status"]["reason"] == "stopped"
    finished = await neighbour_outcome
    assert finished["status"]["state"] == "COMPLETED", finished
    assert "neighbour done" in neighbour_log.lines
    assert allocation_state(allocation_of(doomed)) == "RUNNING"


async def test_a_tenant_whose_allocation_is_cancelled_fails_with_the_allocations_end_as_reason(
    reservation: str,
) -> None:
    trigger = await start(reservation, 'echo "working"; sleep 300', task_key("orphan"))
    log = collected(trigger)
    running = asyncio.create_task(outcome(trigger))
    await log.wait_for("^working$")
    job_id = allocation_of(trigger)
    cluster.ssh(f"scancel {shlex.quote(job_id)}")
    payload = await running
    assert payload["kind"] == "ended"
    assert payload["status"]["state"] == "CANCELLED"
    assert payload["status"]["reason"].startswith(f"allocation {job_id} ended CANCELLED")
    assert "while the tenant ran" in payload["status"]["reason"]


async def test_a_retry_adopts_the_live_tenant_an_earlier_try_started(reservation: str) -> None:
    run = uuid.uuid4().hex
    first = await start(reservation, 'echo "first try"; sleep 4; echo "first try done"', task_key("retry", 1, run))
    link = transport()
    try:
        again = await launch_tenant(
            link,
            reservation,
            TenantSpec(command='echo "this must never run"'),
            key=task_key("retry", 2, run),
            log_dir=DEFAULT_LOG_DIR,
        )
    finally:
        await link.close()
    assert again.word == "ADOPTED" and again.try_number == 1
    adopted = SlurmTenantTrigger(
        "slurm_local",
        slurm_tenant.tenant_id(str(again.allocation_id), task_key("retry", 1, run), 1),
        DEFAULT_LOG_DIR,
        poll_interval=1,
    )
    assert adopted.tenant_id == first.tenant_id
    log = collected(adopted)
    payload = await outcome(adopted)
    assert payload["status"]["state"] == "COMPLETED"
    assert "first try done" in log.lines and "this must never run" not in log.lines


async def test_env_values_reach_a_tenant_verbatim_and_execute_nothing(reservation: str) -> None:
    injected = "/tmp/airflow-hpc-injected"
    cluster.ssh(f"rm -f {injected}")
    command = "\n".join(f'echo "{name}=$(printf %s "${name}" | base64 -w0)"' for name in NASTY_VALUES)
    trigger = await start(reservation, command, task_key("env"), env=NASTY_VALUES)
    log = collected(trigger)
    payload = await outcome(trigger)
    assert payload["status"]["state"] == "COMPLETED", log.lines
    for name, value in NASTY_VALUES.items():
        assert f"{name}={base64.b64encode(value.encode()).decode()}" in log.lines, (name, log.lines)
    assert cluster.ssh(f"test -e {injected} && echo yes || echo no").strip() == "no"


async def test_a_job_booked_without_the_tmux_server_is_refused_with_how_to_rebook(slurm_connection: str) -> None:
    name = f"it-plain-{uuid.uuid4().hex[:8]}"
    job_id = cluster.ssh(
        f"sbatch --parsable -J {name} -A myacct -c 1 --mem=64M -t 3 -o /dev/null --wrap 'sleep 170'"
    ).strip()
    try:
        cluster.wait_for(job_id, {"RUNNING"}, 60)
        with pytest.raises(AllocationError) as raised:
            link = transport()
            try:
                await launch_tenant(
                    link, name, TenantSpec(command="true"), key=task_key("plain"), log_dir=DEFAULT_LOG_DIR
                )
            finally:
                await link.close()
        message = str(raised.value)
        assert f"Slurm job {job_id}" in message and "was not booked by this provider" in message
        assert "SlurmAllocationOperator" in message and "book it again" in message
    finally:
        cluster.ssh(f"scancel {shlex.quote(job_id)}")


async def test_an_allocation_whose_tmux_server_died_is_refused_with_how_to_rebook(reservation: str) -> None:
    link = transport()
    try:
        found = await find_allocation(link, reservation)
        job_id = str(found.job_id)
        # The server is the batch step's main process, so killing it would end the job too; removing
        # its socket leaves a running allocation that no tmux client can reach.
        cluster.ssh(
            f"srun --jobid={job_id} --overlap sh -c 'rm -f /tmp/tmux-$(id -u)/{slurm_allocation.socket_name(job_id)}'"
        )
        with pytest.raises(AllocationError) as raised:
            await launch_tenant(
                link, reservation, TenantSpec(command="true"), key=task_key("x"), log_dir=DEFAULT_LOG_DIR
            )
    finally:
        await link.close()
    message = str(raised.value)
    assert "has no tmux server on socket" in message and "book it again" in message


async def test_an_unknown_reservation_is_refused_by_name(slurm_connection: str) -> None:
    link = transport()
    try:
        with pytest.raises(AllocationError, match="reservation 'it-nobody-booked-this' is unknown"):
            await launch_tenant(
                link, "it-nobody-booked-this", TenantSpec(command="true"), key=task_key("x"), log_dir=DEFAULT_LOG_DIR
            )
    finally:
        await link.close()


@pytest.mark.slow
async def test_a_persistent_allocation_resubmits_itself_on_usr1_and_the_name_follows_the_new_job(
    slurm_connection: str,
) -> None:
    name = f"it-persist-{uuid.uuid4().hex[:8]}"
    # 2-minute limit, USR1 100 s before it. Slurm checks signal times on a coarse timer: here the
    # signal came 20-100 s into the job. The name points at the successor as soon as it runs
    # (or once the predecessor has ended, if the successor still queues).
    first = await book(name, minutes=2, lead_s=100)
    try:
        link = transport()
        try:
            successor = None
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                found = await find_allocation(link, name)
                if found.job_id not in (None, first):
                    successor = found.job_id
                    assert found.ours
                    break
                await asyncio.sleep(1)
        finally:
            await link.close()
        assert successor is not None and int(successor) > int(first)
        output = cluster.ssh(f"cat ~/{DEFAULT_LOG_DIR}/allocations/{name}/allocation-{first}.out")
        assert f"resubmitted as {successor}" in output
    finally:
        released = await release(name)
    # Release cancels the whole chain: the successor, and the predecessor if it still runs.
    assert successor in released
    assert cluster.wait_for(successor, {"CANCELLED"}, 30) == "CANCELLED"
    assert cluster.wait_for(first, {"CANCELLED", "TIMEOUT"}, 60) in ("CANCELLED", "TIMEOUT")


def test_the_example_dag_books_an_allocation_runs_tenants_and_releases_it(run_dag) -> None:
    result = run_dag("slurm_tenant_pool", dags_folder=EXAMPLE_DAGS)
    assert result.succeeded, result.output[-4000:]
    for task in ("prepare", "shard_1", "shard_2", "summarise"):
        assert f"task_id={task}" in result.output
    for shard in (1, 2):
        for step in (1, 2, 3):
            assert result.output.count(f"shard {shard} step {step} in allocation") == 1
    assert "Released reservation 'example-tenant-pool'" in result.output
