"""SlurmSubmitOperator end to end: real Airflow task runner (``airflow dags test``), real sshd, real Slurm."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from tests.integration import cluster
from tests.integration.conftest import EXAMPLE_DAGS
from tests.integration.dags.slurm_scenarios import NASTY_JOB_NAME, NASTY_VALUES

pytestmark = pytest.mark.cluster


def submitted_job_id(output: str) -> str:
    match = re.search(r"(?:Submitted|Adopted) Slurm job (\d+) on slurm_local", output)
    assert match, f"no submission line in the task log:\n{output[-3000:]}"
    return match.group(1)


def test_a_successful_job_streams_each_output_line_once_and_succeeds(run_dag) -> None:
    result = run_dag("it_success")
    assert result.succeeded, result.output[-4000:]
    job_id = submitted_job_id(result.output)
    for i in range(1, 6):
        assert result.output.count(f"line {i} of 5") == 1, f"line {i} not streamed exactly once"
    assert "stderr line" in result.output
    assert re.search(rf"Slurm job {job_id}: RUNNING on \S+", result.output)
    assert re.search(rf"Slurm job {job_id} ended COMPLETED \(exit 0:0\) after 00:00:0\d", result.output)
    assert "#SBATCH --time=00:05:00" in result.output  # the rendered script is in the log
    assert cluster.sacct_row(job_id)[1] == "COMPLETED"


def test_the_example_slurm_dag_runs_and_its_output_reaches_the_task_log(run_dag) -> None:
    result = run_dag("slurm_hello", dags_folder=EXAMPLE_DAGS)
    assert result.succeeded, result.output[-4000:]
    assert result.output.count("step 3 of 3: values reach the job verbatim: $(not run) `nor this`") == 1


def test_the_example_script_file_dag_renders_its_sbatch_file_and_templated_resources(run_dag) -> None:
    result = run_dag("slurm_script_file", dags_folder=EXAMPLE_DAGS)
    assert result.succeeded, result.output[-4000:]
    for shard in (1, 2, 3):
        assert result.output.count(f"preprocessing shard {shard} of 3 for ") == 1
    job_id = submitted_job_id(result.output)
    assert cluster.sacct_row(job_id, "JobIDRaw,State,ReqMem,Partition,Timelimit") == [
        job_id,
        "COMPLETED",
        "256M",
        "debug",
        "00:05:00",
    ]


def test_a_job_watched_on_the_worker_streams_its_output_too(run_dag) -> None:
    result = run_dag("it_not_deferrable")
    assert result.succeeded, result.output[-4000:]
    assert "worker-side line A" in result.output and "worker-side line B" in result.output
    assert "Pausing task as DEFERRED" not in result.output


def test_a_failing_job_fails_the_task_with_its_exit_code_and_last_lines(run_dag) -> None:
    result = run_dag("it_failed")
    assert not result.succeeded
    job_id = submitted_job_id(result.output)
    assert f"Slurm job {job_id} ended FAILED (exit 3:0)" in result.output
    assert "last lines of the job's output:\nabout to fail" in result.output
    assert cluster.sacct_row(job_id)[1:3] == ["FAILED", "3:0"]


def test_a_job_over_its_memory_ends_out_of_memory(run_dag) -> None:
    result = run_dag("it_out_of_memory")
    assert not result.succeeded
    job_id = submitted_job_id(result.output)
    assert re.search(rf"Slurm job {job_id} ended OUT_OF_MEMORY \(exit 0:125\)", result.output), result.output[-3000:]
    assert cluster.sacct_row(job_id)[1] == "OUT_OF_MEMORY"


@pytest.mark.slow
def test_a_job_past_its_slurm_time_limit_ends_timeout(run_dag) -> None:
    result = run_dag("it_time_limit")
    assert not result.succeeded
    job_id = submitted_job_id(result.output)
    assert re.search(rf"Slurm job {job_id} ended TIMEOUT", result.output), result.output[-3000:]
    assert cluster.sacct_row(job_id)[1] == "TIMEOUT"


def test_a_task_past_its_execution_timeout_cancels_its_job(run_dag) -> None:
    result = run_dag("it_execution_timeout")
    assert not result.succeeded
    job_id = submitted_job_id(result.output)
    assert "long job started" in result.output
    assert f"Slurm job {job_id} passed the task's time limit: cancelling it" in result.output
    assert cluster.wait_for(job_id, {"CANCELLED"}, timeout_s=30) == "CANCELLED"


def test_env_values_and_the_job_name_arrive_verbatim_and_execute_nothing(run_dag) -> None:
    injected = Path("/tmp/airflow-hpc-injected")
    cluster.ssh(f"rm -f {injected}")
    injected.unlink(missing_ok=True)
    result = run_dag("it_env_verbatim")
    assert result.succeeded, result.output[-4000:]
    for name, value in NASTY_VALUES.items():
        encoded = base64.b64encode(value.encode()).decode()
        assert f"{name}={encoded}" in result.output, f"{name} did not arrive verbatim"
        assert value not in result.output.split("Batch script:")[1].split("Pausing task")[0]
    job_id = submitted_job_id(result.output)
    assert cluster.job_name(job_id) == NASTY_JOB_NAME
    assert cluster.ssh(f"test -e {injected} && echo yes || echo no").strip() == "no"
    assert not injected.exists()


def test_a_refused_submission_shows_the_schedulers_words(run_dag) -> None:
    result = run_dag("it_bad_account")
    assert not result.succeeded
    assert "sbatch on hpcuser@127.0.0.1:2222 (connection slurm_local) exited 1" in result.output
    assert "Invalid account or account/partition combination specified" in result.output


def test_a_retry_adopts_the_live_job_an_earlier_try_left_instead_of_submitting_again(run_dag) -> None:
    result = run_dag("it_adoption")
    assert result.succeeded, result.output[-4000:]
    match = re.search(r"earlier try submitted job (\d+) with key (\w+)", result.output)
    assert match, result.output[-4000:]
    earlier_job, digest = match.groups()
    assert f"Adopted Slurm job {earlier_job} on slurm_local" in result.output
    assert "output of the earlier try's job" in result.output
    assert "this must never run" not in result.output.split("Pausing task as DEFERRED")[-1]
    assert cluster.jobs_with_comment_prefix(f"airflow-hpc:{digest}:") == [earlier_job]
