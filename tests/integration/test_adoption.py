"""A job that finished while its worker was dead is adopted, not run again (Slurm, PBS, tenants).

Each test plays the crashed worker: try 1 submits and never watches, the job ends, then try 2
submits the same task instance as the operator does. Try 2 must adopt the ended job, its trigger
must stream the job's whole output and end with its state; once watched, the job is consumed, so
try 3 submits anew. A job cancelled on purpose is never adopted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from airflow_hpc_provider.dialects import pbs, pbs_exits, pbs_submit, slurm, slurm_tenant
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.dialects.slurm_tenant import TenantSpec
from airflow_hpc_provider.hooks import pbs as pbs_hook
from airflow_hpc_provider.hooks import slurm as slurm_hook
from airflow_hpc_provider.hooks.pbs import PbsHook
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR, SlurmHook
from airflow_hpc_provider.hooks.slurm_tenant import launch_tenant
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec
from airflow_hpc_provider.triggers.pbs import PbsJobTrigger
from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
from airflow_hpc_provider.triggers.slurm_tenant import SlurmTenantTrigger
from airflow_hpc_provider.watching.ssh_watch import cancel_job
from tests.integration import cluster
from tests.integration.test_slurm_tenant import book, release
from tests.integration.test_slurm_trigger import collected

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]

OUTPUT_LINES = 40


def output_command(tag: str, exit_code: int) -> str:
    return f'for i in $(seq 1 {OUTPUT_LINES}); do echo "{tag} line $i"; done; exit {exit_code}'


async def fired(trigger: SlurmJobTrigger | PbsJobTrigger | SlurmTenantTrigger, timeout_s: float = 120) -> dict:
    events: AsyncIterator = trigger.run()
    try:
        async with asyncio.timeout(timeout_s):
            event = await anext(events)
    finally:
        await events.aclose()
    return event.payload


# --- Slurm --------------------------------------------------------------------------------------


async def submit_slurm(key: JobKey, command: str) -> slurm.SubmitOutcome:
    spec = JobSpec(command=command, job_name="adoption-test")
    transport = SshTransport(SlurmHook("slurm_local").get_target())
    try:
        return await slurm_hook.submit_job(
            transport, spec, slurm.render_script(spec), key=key, log_dir=DEFAULT_LOG_DIR, env={}
        )
    finally:
        await transport.close()


def slurm_trigger(key: JobKey, job_id: str) -> SlurmJobTrigger:
    return SlurmJobTrigger(
        conn_id="slurm_local",
        job_id=job_id,
        log_path=slurm.log_path(DEFAULT_LOG_DIR, key, job_id),
        cursor_path=slurm.cursor_path(DEFAULT_LOG_DIR, key, job_id),
        poll_interval=1,
    )


@pytest.mark.parametrize(("exit_code", "state"), [(0, "COMPLETED"), (3, "FAILED")])
async def test_a_slurm_job_that_ended_while_its_worker_was_dead_decides_the_retry_and_is_not_run_again(
    slurm_connection: str, exit_code: int, state: str
) -> None:
    run = uuid.uuid4().hex
    tag = f"adopt-{run[:8]}"
    first = await submit_slurm(JobKey.for_task_instance("adoption", "job", run, -1, 1), output_command(tag, exit_code))
    assert first.job_id is not None and not first.adopted
    assert await asyncio.to_thread(cluster.wait_for, first.job_id, {state}, 120) == state

    retry_key = JobKey.for_task_instance("adoption", "job", run, -1, 2)
    second = await submit_slurm(retry_key, 'echo "this must never run"')
    assert (second.job_id, second.adopted, second.ended) == (first.job_id, True, True)

    trigger = slurm_trigger(retry_key, first.job_id)
    log = collected(trigger)
    payload = await fired(trigger)
    assert payload["kind"] == "ended" and payload["status"]["state"] == state
    assert payload["status"]["exit_code"] == exit_code
    streamed = [line for line in log.lines if line.startswith(f"{tag} line ")]
    assert streamed == [f"{tag} line {i}" for i in range(1, OUTPUT_LINES + 1)]

    third = await submit_slurm(JobKey.for_task_instance("adoption", "job", run, -1, 3), "echo fresh")
    assert third.job_id != first.job_id and not third.adopted, "an adopted outcome must be consumed once"
    assert await asyncio.to_thread(cluster.wait_for, str(third.job_id), {"COMPLETED"}, 120)
    key_prefix = f"airflow-hpc:{retry_key.task_digest}:"
    expected = sorted([first.job_id, str(third.job_id)])
    accounted: list[str] = []
    for _ in range(60):  # accounting learns of a job a moment after squeue does
        accounted = sorted(await asyncio.to_thread(cluster.jobs_with_comment_prefix, key_prefix))
        if accounted == expected:
            break
        await asyncio.sleep(0.5)
    assert accounted == expected, "one job for try 1 (adopted by try 2), one for try 3, and no other"


async def test_a_slurm_job_cancelled_on_purpose_is_never_adopted(slurm_connection: str) -> None:
    run = uuid.uuid4().hex
    key = JobKey.for_task_instance("adoption", "cancelled", run, -1, 1)
    first = await submit_slurm(key, "sleep 300")
    assert first.job_id is not None
    # What a worker-side on_kill or a timeout does: cancel, and claim the job while doing so.
    target = SlurmHook("slurm_local").get_target()
    await cancel_job(
        target, slurm.SlurmDialect(), first.job_id, cursor_path=slurm.cursor_path(DEFAULT_LOG_DIR, key, first.job_id)
    )
    assert await asyncio.to_thread(cluster.wait_for, first.job_id, {"CANCELLED"}, 60) == "CANCELLED"

    second = await submit_slurm(JobKey.for_task_instance("adoption", "cancelled", run, -1, 2), "echo fresh")
    try:
        assert second.job_id != first.job_id and not second.adopted
    finally:
        cluster.ssh(f"scancel {second.job_id}", check=False)


# --- PBS (the Torque-compatible wrappers) -------------------------------------------------------


async def submit_pbs(key: JobKey, command: str) -> pbs_submit.PbsSubmitOutcome:
    spec = JobSpec(command=command, job_name="adoption-test")
    log_dir = pbs_hook.DEFAULT_LOG_DIR
    script = pbs.render_script(spec, PbsFlavour.TORQUE, exit_dir=pbs_exits.exit_dir(log_dir))
    transport = SshTransport(PbsHook("pbs_local").get_target())
    try:
        return await pbs_hook.submit_job(transport, spec, script, PbsFlavour.TORQUE, key=key, log_dir=log_dir, env={})
    finally:
        await transport.close()


def pbs_trigger(key: JobKey, job_id: str, try_number: int) -> PbsJobTrigger:
    log_dir = pbs_hook.DEFAULT_LOG_DIR
    return PbsJobTrigger(
        conn_id="pbs_local",
        job_id=job_id,
        log_path=pbs.log_path(log_dir, key.task_digest, try_number),
        cursor_path=pbs.cursor_path(log_dir, key.task_digest, try_number),
        poll_interval=1,
        flavour=PbsFlavour.TORQUE.value,
        log_dir=log_dir,
    )


async def test_a_pbs_job_that_ended_while_its_worker_was_dead_decides_the_retry_and_is_not_run_again(
    cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_PBS_LOCAL", cluster_env["AIRFLOW_CONN_PBS_LOCAL"])
    run = uuid.uuid4().hex
    tag = f"pbs-adopt-{run[:8]}"
    first = await submit_pbs(JobKey.for_task_instance("adoption", "pbs", run, -1, 1), output_command(tag, 3))
    assert not first.adopted
    assert await asyncio.to_thread(cluster.wait_for, first.job_id, {"FAILED"}, 120) == "FAILED"

    retry_key = JobKey.for_task_instance("adoption", "pbs", run, -1, 2)
    second = await submit_pbs(retry_key, 'echo "this must never run"')
    assert (second.job_id, second.adopted, second.ended, second.try_number) == (first.job_id, True, True, 1)

    trigger = pbs_trigger(retry_key, second.job_id, second.try_number)
    log = collected(trigger)
    payload = await fired(trigger)
    assert payload["kind"] == "ended" and payload["status"]["state"] == "FAILED"
    assert payload["status"]["exit_code"] == 3
    streamed = [line for line in log.lines if line.startswith(f"{tag} line ")]
    assert streamed == [f"{tag} line {i}" for i in range(1, OUTPUT_LINES + 1)]

    third = await submit_pbs(JobKey.for_task_instance("adoption", "pbs", run, -1, 3), "echo fresh")
    assert third.job_id != first.job_id and not third.adopted, "an adopted outcome must be consumed once"
    assert await asyncio.to_thread(cluster.wait_for, third.job_id, {"COMPLETED"}, 120)


# --- tenants ------------------------------------------------------------------------------------


async def launch(reservation: str, key: JobKey, command: str) -> slurm_tenant.LaunchOutcome:
    transport = SshTransport(SlurmHook("slurm_local").get_target())
    try:
        return await launch_tenant(
            transport, reservation, TenantSpec(command=command), key=key, log_dir=DEFAULT_LOG_DIR
        )
    finally:
        await transport.close()


@pytest.fixture
def allocation(slurm_connection: str) -> Iterator[str]:
    """A fresh 1-CPU allocation for one test, released afterwards whatever happened."""
    name = f"it-adoption-{uuid.uuid4().hex[:8]}"
    asyncio.run(book(name))
    yield name
    asyncio.run(release(name))


async def test_a_tenant_that_ended_while_its_worker_was_dead_decides_the_retry_and_is_not_run_again(
    allocation: str,
) -> None:
    reservation = allocation
    run = uuid.uuid4().hex
    tag = f"tenant-adopt-{run[:8]}"
    first_key = JobKey.for_task_instance("adoption", "tenant", run, -1, 1)
    first = await launch(reservation, first_key, output_command(tag, 3))
    assert first.word == "STARTED" and first.allocation_id is not None
    directory = slurm_tenant.TenantRef(first.allocation_id, first_key.task_digest, 1).directory(DEFAULT_LOG_DIR)
    await asyncio.to_thread(
        lambda: cluster.ssh(f"for i in $(seq 1 120); do [ -f {directory}/exit ] && exit 0; sleep 0.5; done; exit 1")
    )

    second = await launch(reservation, JobKey.for_task_instance("adoption", "tenant", run, -1, 2), "echo never")
    assert (second.word, second.allocation_id, second.try_number) == ("DONE", first.allocation_id, 1)

    tenant = slurm_tenant.tenant_id(first.allocation_id, first_key, 1)
    trigger = SlurmTenantTrigger("slurm_local", tenant, DEFAULT_LOG_DIR, poll_interval=1)
    log = collected(trigger)
    payload = await fired(trigger)
    assert payload["kind"] == "ended" and payload["status"]["state"] == "FAILED"
    assert payload["status"]["exit_code"] == 3
    streamed = [line for line in log.lines if line.startswith(f"{tag} line ")]
    assert streamed == [f"{tag} line {i}" for i in range(1, OUTPUT_LINES + 1)]

    third = await launch(reservation, JobKey.for_task_instance("adoption", "tenant", run, -1, 3), "echo fresh")
    assert (third.word, third.try_number) == ("STARTED", 3), "an adopted outcome must be consumed once"
