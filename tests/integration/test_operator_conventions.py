"""The Airflow conventions SlurmSubmitOperator follows, run by Airflow's task runner against the real cluster.

One ``airflow dags test`` of ``conv_tasks`` runs a task per convention (script file from the
template path, Jinja in resources, an invalid account with retries, skip_on_exit_code); each test
reads its task's part of that run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import cluster
from tests.integration.conftest import DagRunResult

pytestmark = pytest.mark.cluster

DAGS = Path(__file__).parent / "conventions_dags"


def run_conventions_dag(env: dict[str, str], dag_id: str) -> DagRunResult:
    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id]
    result = subprocess.run(
        command, env={**env, "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS)}, capture_output=True, text=True, timeout=900
    )
    return DagRunResult(result.returncode, result.stdout + result.stderr)


@pytest.fixture(scope="module")
def conv_run(airflow_home: dict[str, str]) -> DagRunResult:
    return run_conventions_dag(airflow_home, "conv_tasks")


def part_of(run: DagRunResult, task_id: str) -> str:
    """What ``airflow dags test`` printed while running one task (every try of it)."""
    parts = re.findall(
        rf"\[DAG TEST\] starting task_id={task_id} .*?\[DAG TEST\] end task task_id={task_id} ", run.output, re.DOTALL
    )
    assert parts, f"{task_id} never ran:\n{run.output[-3000:]}"
    return "\n".join(parts)


def final_state(part: str) -> str:
    states = re.findall(r"new_state=(\w+)", part)
    assert states, part[-2000:]
    return states[-1]


def job_id_in(part: str) -> str:
    match = re.search(r"(?:Submitted|Adopted) Slurm job (\d+) on slurm_local", part)
    assert match, part[-3000:]
    return match.group(1)


def test_a_sbatch_file_on_the_template_path_is_read_rendered_and_keeps_its_own_directives(conv_run) -> None:
    part = part_of(conv_run, "script_file")
    assert final_state(part) == "success", part[-3000:]
    assert re.search(r"training resnet for 3 epochs \(run manual__\S+\)", part)
    assert "cpus given by the script's own #SBATCH line: 2" in part
    assert "{{" not in part.split("Batch script:")[1].split("Pausing task")[0]


def test_jinja_in_the_connection_id_and_resources_is_rendered_before_submission(conv_run) -> None:
    part = part_of(conv_run, "templated_resources")
    assert final_state(part) == "success", part[-3000:]
    assert "partition=debug cpus=2" in part
    assert "TimeLimit=00:05:00" in part
    job_id = job_id_in(part)
    assert cluster.sacct_row(job_id, "JobIDRaw,State,ReqMem,Partition") == [job_id, "COMPLETED", "128M", "debug"]


def test_a_template_that_renders_to_a_bad_value_fails_once_with_the_parse_time_message(conv_run) -> None:
    part = part_of(conv_run, "templated_bad_cpus")
    assert "JobSpecError: cpus='resnet' must be a whole number of at least 1" in part
    assert final_state(part) == "failed"
    assert conv_run.output.count("[DAG TEST] starting task_id=templated_bad_cpus ") == 1  # retries=3 unused
    assert "Submitted Slurm job" not in part


def test_an_invalid_account_fails_at_once_although_the_task_has_three_retries(conv_run) -> None:
    part = part_of(conv_run, "bad_account")
    assert "SubmissionRefusedError: sbatch on hpcuser@127.0.0.1:2222 (connection slurm_local) exited 1" in part
    assert "Invalid account or account/partition combination specified" in part
    assert final_state(part) == "failed"
    assert conv_run.output.count("[DAG TEST] starting task_id=bad_account ") == 1
    assert "up_for_retry" not in part


def test_an_exit_code_in_skip_on_exit_code_skips_the_task_and_others_still_fail_it(conv_run) -> None:
    skipped = part_of(conv_run, "skipped_exit")
    job_id = job_id_in(skipped)
    assert f"Slurm job {job_id} exited 99, which skip_on_exit_code marks as skipped" in skipped
    assert final_state(skipped) == "skipped"
    assert cluster.sacct_row(job_id, "JobIDRaw,State,ExitCode") == [job_id, "FAILED", "99:0"]
    failed = part_of(conv_run, "failed_exit")
    assert final_state(failed) == "failed"
    assert "ended FAILED (exit 3:0)" in failed


def test_operators_defer_by_default_even_where_airflow_cfg_holds_airflows_generated_false(
    airflow_home, conv_run
) -> None:
    airflow_cfg = Path(airflow_home["AIRFLOW_HOME"]) / "airflow.cfg"
    assert "default_deferrable = false" in airflow_cfg.read_text()  # what Airflow writes, untouched by anyone
    assert "Pausing task as DEFERRED" in part_of(conv_run, "script_file")


def test_a_deployment_that_turns_default_deferrable_off_watches_jobs_on_the_worker(airflow_home) -> None:
    switched_off = {**airflow_home, "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "False"}
    run = run_conventions_dag(switched_off, "conv_default_deferrable")
    assert run.succeeded, run.output[-3000:]
    assert "where am I watched?" in run.output
    assert "Pausing task as DEFERRED" not in run.output
