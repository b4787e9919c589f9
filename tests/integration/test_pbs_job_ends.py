"""How a PBS job's end is told through the cluster's Torque-compatible wrappers, over real sshd.

The wrappers' qstat reports no exit status at all, so these lean on the script's own exit-status
file and on Slurm's accounting underneath: a qdel by hand is named CANCELLED (a walltime kill,
TIMEOUT: see test_pbs_operator.py), a SIGKILL names its signal, and an array that got past the
checks never passes for a success. Jobs are submitted as the operator submits them and watched by
the real trigger.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import uuid

import pytest

from airflow_hpc_provider.dialects import pbs, pbs_exits
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.errors import JobFailedError
from airflow_hpc_provider.hooks.pbs import DEFAULT_LOG_DIR, PbsHook, submit_job
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobStatus
from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.triggers.pbs import PbsJobTrigger
from tests.integration import cluster
from tests.integration.test_slurm_trigger import collected, first_event

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]


@pytest.fixture
def pbs_connection(cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_PBS_LOCAL", cluster_env["AIRFLOW_CONN_PBS_LOCAL"])
    return "pbs_local"


async def submit(conn_id: str, spec: JobSpec, *, script: str | None = None) -> PbsJobTrigger:
    """Render and submit as PbsOperator does (the script records its end); return the trigger."""
    key = JobKey.for_task_instance("pbs_job_ends", "job", uuid.uuid4().hex, -1, 1)
    batch = pbs.render_script(spec, PbsFlavour.TORQUE, script=script, exit_dir=pbs_exits.exit_dir(DEFAULT_LOG_DIR))
    transport = SshTransport(PbsHook(conn_id).get_target())
    try:
        outcome = await submit_job(transport, spec, batch, PbsFlavour.TORQUE, key=key, log_dir=DEFAULT_LOG_DIR, env={})
    finally:
        await transport.close()
    return PbsJobTrigger(
        conn_id=conn_id,
        job_id=outcome.job_id,
        log_path=pbs.log_path(DEFAULT_LOG_DIR, key.task_digest, outcome.try_number),
        cursor_path=pbs.cursor_path(DEFAULT_LOG_DIR, key.task_digest, outcome.try_number),
        poll_interval=1,
        flavour="torque",
        log_dir=DEFAULT_LOG_DIR,
    )


def summary_of(payload: dict) -> str:
    return PbsOperator(task_id="t", command="true").summary(JobStatus.from_dict(payload["status"]))


async def test_a_qdel_by_hand_ends_cancelled_and_says_so(pbs_connection: str) -> None:
    trigger = await submit(pbs_connection, JobSpec(command='echo "started"; sleep 300', job_name="qdel-by-hand"))
    log = collected(trigger)
    running = asyncio.create_task(first_event(trigger))
    await log.wait_for("^started$")
    cluster.ssh(f"qdel {shlex.quote(trigger.job_id)}")
    payload = await asyncio.wait_for(running, 90)

    assert payload["status"]["state"] == "CANCELLED", payload
    summary = summary_of(payload)
    assert summary.startswith(f"PBS job {trigger.job_id} ended CANCELLED (C) (killed by signal 15 (SIGTERM))"), summary
    assert "reason: CANCELLED by " in summary and "unknown" not in summary, summary
    # The script's trap ran although the batch shell was waiting for its command.
    exit_file = f"{DEFAULT_LOG_DIR}/exit/{trigger.job_id}"
    assert cluster.ssh(f"cat {shlex.quote(exit_file)}").strip() == "143 TERM"


async def test_a_job_killed_by_sigkill_names_the_signal(pbs_connection: str) -> None:
    trigger = await submit(pbs_connection, JobSpec(command='echo "about to die"; kill -9 $$', job_name="k9"))
    payload = await asyncio.wait_for(first_event(trigger), 90)
    assert payload["status"]["state"] == "FAILED", payload
    summary = summary_of(payload)
    assert re.match(rf"PBS job {trigger.job_id} ended FAILED \(C\) \(killed by signal 9 \(SIGKILL\)\)", summary), (
        summary
    )


async def test_an_array_that_got_past_the_checks_runs_nothing_and_never_passes_for_a_success(
    pbs_connection: str,
) -> None:
    """A #PBS -t line in a script handed to the hook directly (the operator refuses it at parse
    time): the wrappers make a Slurm array whose elements look like single jobs; each element's
    script refuses to run, the task fails saying why, and the operator deletes the array."""
    marker = f"/tmp/airflow-hpc-array-ran-{uuid.uuid4().hex}"
    script = f"#!/bin/bash\n#PBS -t 1-2\ntouch {marker}-$PBS_ARRAY_INDEX\necho done\n"
    trigger = await submit(pbs_connection, JobSpec(command="", job_name="array"), script=script)
    payload = await asyncio.wait_for(first_event(trigger), 90)
    status = JobStatus.from_dict(payload["status"])
    assert status.state.value == "FAILED" and "job array" in str(status.reason), payload

    operator = PbsOperator(task_id="t", pbs_conn_id=pbs_connection, command="true")
    with pytest.raises(JobFailedError, match="element of a job array"):
        await asyncio.to_thread(operator.execute_complete, {}, {**payload, "conn_id": pbs_connection})
    assert cluster.ssh(f"ls {marker}-* 2>/dev/null | wc -l").strip() == "0"  # no element ran the payload


# A walltime kill: tests/integration/test_pbs_operator.py (a slow test, through a whole DAG run).
