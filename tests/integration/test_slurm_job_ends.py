"""How a Slurm job's end is told, against the real cluster: arrays never pass for a success, a
signal is named, and a success carries no reason left over from an earlier state.

Jobs are submitted as the operator submits them (``submit_job``) and watched by the real trigger;
the summary line is the operator's own.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import uuid
from collections.abc import Mapping

import pytest

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.errors import JobFailedError
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR, SlurmHook, submit_job
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobStatus
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator
from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
from tests.integration import cluster
from tests.integration.test_slurm_trigger import collected, first_event

pytestmark = [pytest.mark.cluster]


async def submit_raw(conn_id: str, spec: JobSpec, env: Mapping[str, str] | None = None) -> SlurmJobTrigger:
    """Submit as the operator's hook does, past the operator's own checks (what a login node's
    environment or a site's wrapper could do behind its back), and return the trigger."""
    key = JobKey.for_task_instance("job_ends", "job", uuid.uuid4().hex, -1, 1)
    transport = SshTransport(SlurmHook(conn_id).get_target())
    try:
        outcome = await submit_job(
            transport, spec, slurm.render_script(spec), key=key, log_dir=DEFAULT_LOG_DIR, env=env or {}
        )
    finally:
        await transport.close()
    assert outcome.job_id is not None
    return SlurmJobTrigger(
        conn_id=conn_id,
        job_id=outcome.job_id,
        log_path=slurm.log_path(DEFAULT_LOG_DIR, key, outcome.job_id),
        cursor_path=slurm.cursor_path(DEFAULT_LOG_DIR, key, outcome.job_id),
        poll_interval=1,
    )


def summary_of(payload: dict) -> str:
    return SlurmSubmitOperator(task_id="t", command="true").summary(JobStatus.from_dict(payload["status"]))


@pytest.mark.asyncio
async def test_a_job_array_made_by_sbatch_array_inx_in_the_submitting_environment_fails_and_is_cancelled(
    slurm_connection: str,
) -> None:
    """The env route, past the parse-time refusal: sbatch turns it into an array whose elements
    all run for a while, one fails, and the element whose raw id is the array's succeeds. Watching
    that one alone was the false success; now the submission fails at its first poll, naming its
    elements, and the operator cancels the array."""
    command = 'echo "element $SLURM_ARRAY_TASK_ID"; sleep 30; [ "$SLURM_ARRAY_TASK_ID" != 1 ] || exit 3'
    trigger = await submit_raw(
        slurm_connection, JobSpec(command=command, job_name="array-env"), env={"SBATCH_ARRAY_INX": "1-3"}
    )
    payload = await asyncio.wait_for(first_event(trigger), 60)
    status = JobStatus.from_dict(payload["status"])
    assert status.state.value == "FAILED" and "job array" in str(status.reason), payload
    assert f"Slurm job {trigger.job_id} is {trigger.job_id}_" in str(status.reason)

    operator = SlurmSubmitOperator(task_id="t", slurm_conn_id=slurm_connection, command="true")
    with pytest.raises(JobFailedError) as failed:  # on a worker, as Airflow resumes the task: no loop running
        await asyncio.to_thread(operator.execute_complete, {}, {**payload, "conn_id": slurm_connection})
    assert "job array or heterogeneous job" in str(failed.value)
    # Every element is cancelled (those still pending share one record, 1234_[2-3]).
    elements = cluster.ssh(f"sacct -n -P -X -j {shlex.quote(trigger.job_id)} -o JobID,State")
    states = dict(line.split("|") for line in elements.splitlines() if line.strip())
    assert states and all(state.startswith("CANCELLED") for state in states.values()), states


@pytest.mark.asyncio
async def test_a_job_killed_by_sigkill_names_the_signal(slurm_connection: str) -> None:
    trigger = await submit_raw(slurm_connection, JobSpec(command='echo "about to die"; kill -9 $$', job_name="k9"))
    payload = await asyncio.wait_for(first_event(trigger), 60)
    assert payload["status"]["state"] == "FAILED"
    assert re.fullmatch(
        rf"Slurm job {trigger.job_id} ended FAILED \(killed by signal 9 \(SIGKILL\)\) after \S+, on \S+.*",
        summary_of(payload),
    ), summary_of(payload)


@pytest.mark.asyncio
async def test_a_held_then_released_job_succeeds_without_the_reason_it_was_held(slurm_connection: str) -> None:
    """sacct keeps the reason a job waited for once its record holds one (released before that,
    the record says None): the success summary used to carry it."""
    trigger = await submit_raw(
        slurm_connection, JobSpec(command='echo "ran after release"', job_name="held", extra_directives=("--hold",))
    )
    log = collected(trigger)
    running = asyncio.create_task(first_event(trigger))
    await log.wait_for(rf"Slurm job {trigger.job_id}: PENDING \(JobHeldUser\)")
    async with asyncio.timeout(60):  # accounting has the held job's record: the reason sticks to it
        while cluster.ssh(f"sacct -n -P -X -j {shlex.quote(trigger.job_id)} -o Reason").strip() != "JobHeldUser":
            await asyncio.sleep(0.25)
    cluster.ssh(f"scontrol release {shlex.quote(trigger.job_id)}")
    payload = await asyncio.wait_for(running, 60)

    assert cluster.sacct_row(trigger.job_id, "JobIDRaw,State,Reason")[1:] == ["COMPLETED", "JobHeldUser"]
    assert payload["status"]["state"] == "COMPLETED" and payload["status"]["reason"] is None, payload
    assert summary_of(payload).startswith(f"Slurm job {trigger.job_id} ended COMPLETED (exit 0:0)")
    assert "JobHeldUser" not in summary_of(payload)
    # Status lines: the reason while the job waited, none once it ran and ended.
    status_lines = [line for line in log.lines if line.startswith(f"Slurm job {trigger.job_id}: ")]
    assert status_lines[0] == f"Slurm job {trigger.job_id}: PENDING (JobHeldUser)", status_lines
    assert all("JobHeldUser" not in line for line in status_lines[1:]), status_lines
    assert status_lines[-1] == f"Slurm job {trigger.job_id}: COMPLETED", status_lines
