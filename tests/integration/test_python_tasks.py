"""``@task.slurm`` end to end: real Airflow task runner (``airflow dags test``), real sshd, real Slurm,
the cluster's own python3 running the function.

The flow below the decorator (payload paths, result documents, Python versions) is specified in
``test_python_runner.py``; here the same promises hold through the decorator, with XComs, the task
log and retries.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from airflow_hpc_provider.jobs import JobKey
from tests.integration import cluster
from tests.integration.conftest import DAGS, EXAMPLE_DAGS, DagRunResult

pytestmark = pytest.mark.cluster


def test_the_example_maps_a_function_over_50_inputs_as_slurm_jobs_and_sums_the_results(run_dag) -> None:
    result = run_dag("python_on_slurm", dags_folder=EXAMPLE_DAGS)
    assert result.succeeded, result.output[-4000:]
    assert result.output.count("the sum of the squares of 0..49 is 40425") == 1
    for x in range(50):
        assert result.output.count(f"squaring {x} on ") == 1, f"the output of input {x} is not in the log once"
    assert len(set(re.findall(r"Submitted Slurm job (\d+) on slurm_local", result.output))) == 50


def task_output(output: str, task_id: str) -> str:
    """What ``airflow dags test`` printed while it ran one task (it runs them one at a time)."""
    start = output.index(f"[DAG TEST] starting task_id={task_id} ")
    return output[start : output.index(f"[DAG TEST] end task task_id={task_id} ", start)]


@pytest.fixture(scope="module")
def outcomes(airflow_home: dict[str, str]) -> str:
    """One run of ``py_outcomes``: its tasks are independent, some fail on purpose."""
    result = run_dag_once(airflow_home, "py_outcomes")
    assert "DagRun Finished: dag_id=py_outcomes" in result.output, result.output[-4000:]
    return result.output


def run_dag_once(airflow_home: dict[str, str], dag_id: str) -> DagRunResult:
    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id]
    done = subprocess.run(
        command,
        env={**airflow_home, "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return DagRunResult(done.returncode, done.stdout + done.stderr)


def test_a_function_returning_a_dict_with_multiple_outputs_gives_each_key_as_an_xcom(outcomes: str) -> None:
    log = task_output(outcomes, "check_outputs")
    assert "outputs as XComs: sum=42 airflow_importable=False executable=/usr/bin/python3" in log
    describe = task_output(outcomes, "describe")
    assert re.search(r"Task instance state updated .*new_state=success", describe)
    assert "Pausing task as DEFERRED" not in describe


def test_a_1_MB_argument_travels_as_a_stored_payload_and_arrives_whole(outcomes: str) -> None:
    log = task_output(outcomes, "digest")
    assert re.search(r"Payload: \d{6} bytes \(gzip\), stored in \.airflow-hpc/logs/\w+-try1\.payload", log), log
    assert "the 1000000-character argument arrived whole" in task_output(outcomes, "compare")


def test_a_raised_exception_fails_the_task_with_the_remote_traceback_in_its_log(outcomes: str) -> None:
    log = task_output(outcomes, "validate")
    assert re.search(r"Slurm job \d+ ended FAILED \(exit 1:0\)", log), log[-3000:]
    assert "the function raised ValueError: bad input 11: at most 10" in log
    assert "Remote traceback:" in log
    # The function's frames, as the remote side saw them (the source lines stayed on the worker).
    traceback = log[log.index("Remote traceback:") :]
    assert re.search(r"line \d+, in validate\n.*line \d+, in check_input\nValueError: bad input 11", traceback)
    assert "new_state=failed" in log


def test_a_function_printing_1000_lines_has_each_line_once_in_the_task_log(outcomes: str) -> None:
    log = task_output(outcomes, "print_lines")
    for number in range(1000):
        assert log.count(f"printed line {number:04d} of 1000") == 1, f"line {number} is not in the task log once"
    assert "new_state=success" in log


def test_an_unpicklable_argument_fails_on_the_worker_and_submits_nothing(outcomes: str) -> None:
    log = task_output(outcomes, "uses_a_lock")
    assert "cannot serialize argument 'value' (_thread.lock) with cloudpickle" in log, log[-3000:]
    assert "nothing was submitted" in log
    assert "Submitted Slurm job" not in log and "The job's Python" not in log
    assert jobs_of(outcomes, "py_outcomes", "uses_a_lock") == []


def test_a_python_version_mismatch_fails_before_submission_naming_both_versions(outcomes: str) -> None:
    log = task_output(outcomes, "on_python_312")
    worker = ".".join(str(part) for part in sys.version_info[:3])
    assert f"is 3.12.1 (/usr/bin/python3), the Airflow worker's is {worker}" in log, log[-3000:]
    assert "nothing was submitted" in log and "Submitted Slurm job" not in log
    assert jobs_of(outcomes, "py_outcomes", "on_python_312") == []


def jobs_of(output: str, dag_id: str, task_id: str) -> list[str]:
    run_id = re.search(r"DagRun Finished: dag_id=\w+, logical_date=[^,]+, run_id=([^,]+),", output)
    assert run_id
    key = JobKey.for_task_instance(dag_id, task_id, run_id.group(1), -1, 1)
    return cluster.jobs_with_comment_prefix(f"{JobKey.PREFIX}:{key.task_digest}:")


def test_a_retry_after_a_crashed_worker_adopts_the_running_job_and_returns_its_result(outcomes: str) -> None:
    match = re.search(r"earlier try submitted job (\d+) with key (\w+)", outcomes)
    assert match, outcomes[-4000:]
    earlier_job, digest = match.groups()
    log = task_output(outcomes, "job")
    assert re.search(rf"Adopted Slurm job {earlier_job} on slurm_local: an earlier try .* still (PENDING|RUNNING)", log)
    assert log.count(f"squaring 7 in Slurm job {earlier_job}") == 1
    assert "Submitted Slurm job" not in log
    assert f"the task returned square 49 computed by Slurm job {earlier_job}" in task_output(outcomes, "report")
    assert cluster.jobs_with_comment_prefix(f"airflow-hpc:{digest}:") == [earlier_job]
    # What the task read is gone: the result document, and the payloads of every try.
    assert (
        cluster.ssh(f"ls .airflow-hpc/logs/ | grep -c '^{digest}-.*\\.\\(result\\|payload\\)$' || true").strip() == "0"
    )


def test_a_function_runs_as_a_pbs_job_too_and_returns_its_value(outcomes: str) -> None:
    log = task_output(outcomes, "on_pbs")
    match = re.search(r"Submitted PBS job (\S+) on pbs_local", log)
    assert match, log[-3000:]
    assert f"the PBS task returned 42 from PBS job {match.group(1)}" in task_output(outcomes, "show")


def test_a_function_runs_as_a_grid_engine_job_with_its_output_in_the_task_log_and_its_value_in_xcom(
    outcomes: str,
) -> None:
    log = task_output(outcomes, "on_sge")
    match = re.search(r"Submitted SGE job (\d+) on sge_local", log)
    assert match, log[-3000:]
    job_id = match.group(1)
    assert log.count(f"tripling 14 in Grid Engine job {job_id}") == 1, log[-3000:]
    assert f"SGE job {job_id} ended COMPLETED (exit 0:0)" in log
    assert "could not delete" not in log
    assert f"the SGE task returned 42 from SGE job {job_id}" in task_output(outcomes, "show_sge")
