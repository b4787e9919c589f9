"""``example_dags/batch_*.py`` through ``airflow dags test`` (real task runner, trigger inline) against moto."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.batch.moto_batch import MotoAws

EXAMPLES = Path(__file__).resolve().parents[3] / "example_dags"


@pytest.mark.parametrize("dag_file", sorted(EXAMPLES.glob("batch_*.py")), ids=lambda p: p.stem)
def test_the_example_dag_runs_with_airflow_dags_test_against_moto(
    moto_aws: MotoAws, dag_file: Path, tmp_path: Path
) -> None:
    queue = moto_aws.make_queue(f"example-{dag_file.stem}")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_AWS_BATCH": moto_aws.connection_uri(job_queue=queue),
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    dag_id = dag_file.stem
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id], env=env, capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert "state=success" in output and "DagRun Finished" in output, output[-4000:]
    match = re.search(r"Submitted AWS Batch job (\S+) \(", output)
    assert match, output[-4000:]
    assert re.search(rf"AWS Batch job {match.group(1)} ended SUCCEEDED", output)
    assert "$(not run)" not in output  # env values are never logged
