"""Batch DAGs through ``airflow dags test`` (real task runner, trigger inline) against moto over HTTP."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from airflow_hpc_provider.watching.batch_logs import CURSOR_XCOM_KEY
from tests.integration.batch.dags.batch_scenarios import ENV_WITH_NEWLINE
from tests.integration.batch.moto_batch import HeldJobs, MotoAws

DAGS = Path(__file__).parent / "dags"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated AIRFLOW_HOME for the module's runs (each runs its own DAG)."""
    path = tmp_path_factory.mktemp("airflow-home")
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=environment(path), check=True, capture_output=True
    )
    return path


def environment(home: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **extra,
    }


def dags_test(moto_aws: MotoAws, home: Path, dag_id: str, queue: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id],
        env=environment(home, AIRFLOW_CONN_AWS_BATCH=moto_aws.connection_uri(job_queue=queue), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_locked_task_runs_the_templates_image_before_and_after_a_revisions_task_on_the_same_template(
    moto_aws: MotoAws, home: Path
) -> None:
    queue = moto_aws.make_queue(f"users-{uuid.uuid4().hex[:8]}")
    template = f"shared-{uuid.uuid4().hex[:8]}"
    moto_aws.client("batch").register_job_definition(
        jobDefinitionName=template,
        type="container",
        containerProperties={"image": "repo/app:template", "vcpus": 1, "memory": 512},
    )
    run = dags_test(moto_aws, home, "batch_template_users", queue, BATCH_TEMPLATE=template)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0 and "state=success" in output, output[-4000:]
    submitted = dict(re.findall(r"Submitted AWS Batch job (\S+) \(batch_template_users-(\w+)-", output))
    images = {
        task: HeldJobs.job(job_id).job_definition.container_properties["image"] for job_id, task in submitted.items()
    }
    assert images == {
        "locked_before": "repo/app:template",
        "revised": "repo/app:revised",
        "locked_after": "repo/app:template",
    }
    described = moto_aws.client("batch").describe_job_definitions(jobDefinitionName=template)["jobDefinitions"]
    assert [(d["revision"], d["containerProperties"]["image"]) for d in described] == [(1, "repo/app:template")]


def test_lines_stream_once_each_and_the_log_position_is_saved_under_airflow_dags_test(
    moto_aws: MotoAws, home: Path
) -> None:
    queue = moto_aws.make_queue(f"stream-{uuid.uuid4().hex[:8]}", held=True)
    run = dags_test(moto_aws, home, "batch_streaming", queue)
    batch = moto_aws.client("batch")
    deadline = time.monotonic() + 180
    while not (jobs := batch.list_jobs(jobQueue=queue, jobStatus="RUNNING")["jobSummaryList"]):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0][-4000:]
        time.sleep(0.2)
    job_id = jobs[0]["jobId"]
    stream = str(HeldJobs.job(job_id).log_stream_name)
    now = int(time.time() * 1000)
    moto_aws.put_lines(stream, [(now + i, f"numbered line {i}") for i in range(1, 201)])
    time.sleep(4)  # a few polls: the lines are read and their position saved while the job runs
    moto_aws.put_lines(stream, [(now + 1000 + i, f"numbered line {i}") for i in range(201, 301)])
    time.sleep(2)
    moto_aws.held.finish(job_id, success=True, exit_code=0)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0 and "state=success" in output, output[-4000:]
    seen = [int(n) for n in re.findall(r"\] numbered line (\d+) ", output)] or [
        int(n) for n in re.findall(r"numbered line (\d+)\b", output)
    ]
    assert sorted(seen) == list(range(1, 301)), output[-3000:]
    assert "could not save the log position" not in output
    with sqlite3.connect(home / "airflow.db") as db:
        query = "SELECT value FROM xcom WHERE key = ? AND dag_id = ?"
        (value,) = db.execute(query, (CURSOR_XCOM_KEY, "batch_streaming")).fetchone()
    saved = json.loads(value if isinstance(value, str) else value.decode())
    (position,) = saved["streams"].values()
    assert position["t"] == now + 1000 + 300  # the last line's timestamp
    # Env values arrive byte-exact, final newline included, templated or not.
    overrides = HeldJobs.job(job_id).container_overrides["environment"]
    environment = {e["name"]: e["value"] for e in overrides if e["name"] in ENV_WITH_NEWLINE}
    assert environment == {"ENDS_WITH_NEWLINE": "value\n", "TEMPLATED": "rendered\n"}
