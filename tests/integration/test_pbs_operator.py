"""PbsOperator end to end against the cluster's Torque-compatible qsub/qstat/qdel, over real sshd."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import uuid
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import pbs, pbs_exits
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.hooks.pbs import DEFAULT_LOG_DIR, PbsHook, submit_job
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec
from airflow_hpc_provider.triggers.pbs import PbsJobTrigger
from tests.integration import cluster
from tests.integration.conftest import EXAMPLE_DAGS
from tests.integration.dags.pbs_scenarios import NASTY_VALUES

pytestmark = pytest.mark.cluster


def submitted_job_id(output: str) -> str:
    match = re.search(r"(?:Submitted|Adopted) PBS job (\S+) on pbs_local", output)
    assert match, f"no submission line in the task log:\n{output[-3000:]}"
    return match.group(1)


def test_the_example_pbs_dag_streams_its_output_and_succeeds(run_dag) -> None:
    result = run_dag("pbs_hello", dags_folder=EXAMPLE_DAGS)
    assert result.succeeded, result.output[-4000:]
    job_id = submitted_job_id(result.output)
    for step in (1, 2, 3):
        assert result.output.count(f"step {step} of 3: values reach the job verbatim") == 1
    # No RUNNING line is asserted here: a job of three seconds can end before a loaded machine's
    # first poll (seen on CI); the walltime test's job runs long enough to be seen running.
    assert re.search(rf"PBS job {job_id} ended COMPLETED \(C\) \(exit 0:0\)", result.output)
    assert "#PBS -l nodes=1:ppn=1" in result.output  # Torque syntax in the logged script


def test_a_failing_pbs_job_reports_the_exit_status_its_script_recorded(run_dag) -> None:
    result = run_dag("pbs_failed")
    assert not result.succeeded
    job_id = submitted_job_id(result.output)
    assert f"PBS job {job_id} ended FAILED (C) (exit 3:0)" in result.output
    assert "last lines of the job's output:\nabout to fail" in result.output


@pytest.mark.slow
def test_a_pbs_job_past_its_walltime_ends_timeout_and_never_passes_for_a_success(run_dag) -> None:
    result = run_dag("pbs_walltime")
    assert not result.succeeded
    job_id = submitted_job_id(result.output)
    assert f"PBS job {job_id}: RUNNING (R)" in result.output  # Torque's letter for a running job
    assert re.search(rf"PBS job {job_id} ended TIMEOUT \(C\) \(killed by signal 15 \(SIGTERM\)\)", result.output), (
        result.output[-3000:]
    )
    assert "reason: TIMEOUT in Slurm's accounting" in result.output
    assert cluster.sacct_row(job_id)[1] == "TIMEOUT"


def test_a_pbs_task_past_its_execution_timeout_deletes_its_job(run_dag) -> None:
    result = run_dag("pbs_execution_timeout")
    assert not result.succeeded
    job_id = submitted_job_id(result.output)
    assert f"PBS job {job_id} passed the task's time limit: cancelling it" in result.output
    assert cluster.wait_for(job_id, {"CANCELLED"}, timeout_s=30) == "CANCELLED"


def test_an_unknown_queue_shows_qsubs_words_in_the_task_log(run_dag) -> None:
    result = run_dag("pbs_unknown_queue")
    assert not result.succeeded
    assert "qsub on hpcuser@127.0.0.1:2222 (connection pbs_local) exited" in result.output
    assert "invalid partition specified: nosuchqueue" in result.output.lower()


def test_pbs_env_values_and_job_name_arrive_verbatim_and_execute_nothing(run_dag) -> None:
    injected = Path("/tmp/airflow-hpc-injected")
    cluster.ssh(f"rm -f {injected}")
    result = run_dag("pbs_env_verbatim")
    assert result.succeeded, result.output[-4000:]
    for name, value in NASTY_VALUES.items():
        assert f"{name}={base64.b64encode(value.encode()).decode()}" in result.output, name
    assert cluster.ssh(f"test -e {injected} && echo yes || echo no").strip() == "no"


@pytest.mark.asyncio
async def test_marking_a_pbs_task_failed_deletes_its_job_through_on_kill(cluster_env, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_PBS_LOCAL", cluster_env["AIRFLOW_CONN_PBS_LOCAL"])
    key = JobKey.for_task_instance("pbs_tests", "job", uuid.uuid4().hex, -1, 1)
    spec = JobSpec(command='echo "started"; sleep 300', job_name="pbs-kill")
    script = pbs.render_script(spec, PbsFlavour.TORQUE, exit_dir=pbs_exits.exit_dir(DEFAULT_LOG_DIR))
    transport = SshTransport(PbsHook("pbs_local").get_target())
    try:
        outcome = await submit_job(transport, spec, script, PbsFlavour.TORQUE, key=key, log_dir=DEFAULT_LOG_DIR, env={})
    finally:
        await transport.close()
    trigger = PbsJobTrigger(
        conn_id="pbs_local",
        job_id=outcome.job_id,
        log_path=pbs.log_path(DEFAULT_LOG_DIR, key.task_digest, outcome.try_number),
        cursor_path=pbs.cursor_path(DEFAULT_LOG_DIR, key.task_digest, outcome.try_number),
        poll_interval=1,
        flavour="torque",
        log_dir=DEFAULT_LOG_DIR,
    )
    running = asyncio.create_task(anext(trigger.run()))
    await asyncio.to_thread(cluster.wait_for, outcome.job_id, {"RUNNING"}, 30)
    await asyncio.sleep(1.5)
    running.cancel()  # what TriggerRunner does on a user action, before on_kill
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await trigger.on_kill()
    assert await asyncio.to_thread(cluster.wait_for, outcome.job_id, {"CANCELLED"}, 30) == "CANCELLED"
