"""``@task.batch`` end to end: real Airflow task runner (``airflow dags test``), moto server for Batch and
S3, the job's container command run as a local process (``moto_batch.HeldJobs.run_container``), so
the bootstrap, the payload download, the function and the result upload really run.

The payload and result paths below the decorator are specified in ``test_python_runner_batch.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from airflow.sdk import DAG, task
from airflow.sdk.exceptions import TaskDeferred

from airflow_hpc_provider.errors import RemotePythonError
from airflow_hpc_provider.triggers.batch import BatchJobTrigger
from airflow_hpc_provider.watching.batch_logs import MemoryPositionStore
from tests.integration.batch.conftest import CONN_ID
from tests.integration.batch.moto_batch import MotoAws
from tests.integration.batch.test_batch_definitions import FakeTI

DAGS = Path(__file__).parent / "dags"
EXAMPLES = Path(__file__).resolve().parents[3] / "example_dags"
PREFIX = "tests/python"


@pytest.fixture(scope="module")
def setting(moto_aws: MotoAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A migrated AIRFLOW_HOME, a queue whose jobs run their container, a bucket (default encryption on)."""
    home = tmp_path_factory.mktemp("airflow-home")
    queue = moto_aws.make_queue(f"python-{uuid.uuid4().hex[:8]}", runs_containers=True)
    bucket = f"payloads-{uuid.uuid4().hex[:12]}"
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_AWS_BATCH": moto_aws.connection_uri(job_queue=queue),
        "PY_BATCH_BUCKET": bucket,
        "PYTHON_ON_BATCH_BUCKET": bucket,
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    # The bundle's row is made now: two `dags test` starting side by side would both insert it
    # (seen: UNIQUE constraint failed: dag_bundle.name).
    sync = "from airflow.dag_processing.bundles.manager import DagBundlesManager as M; M().sync_bundles_to_db()"
    subprocess.run([sys.executable, "-c", sync], env=env, check=True, capture_output=True)
    yield env


@pytest.fixture(scope="module")
def runs(setting: dict[str, str]) -> dict[str, str]:
    """The example and ``py_batch_outcomes`` (its tasks independent, one failing on purpose), run side
    by side: each mostly waits for its polls."""
    started = {
        dag_id: subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", dag_id],
            env={**setting, "AIRFLOW__CORE__DAGS_FOLDER": str(folder)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for dag_id, folder in (("python_on_batch", EXAMPLES), ("py_batch_outcomes", DAGS))
    }
    outputs = {dag_id: process.communicate(timeout=600)[0] for dag_id, process in started.items()}
    for dag_id, output in outputs.items():
        assert f"DagRun Finished: dag_id={dag_id}" in output, output[-4000:]
    return outputs


@pytest.fixture(scope="module")
def outcomes(runs: dict[str, str]) -> str:
    return runs["py_batch_outcomes"]


def task_output(output: str, task_id: str) -> str:
    """What ``airflow dags test`` printed while it ran one task (it runs them one at a time)."""
    start = output.index(f"[DAG TEST] starting task_id={task_id} ")
    return output[start : output.index(f"[DAG TEST] end task task_id={task_id} ", start)]


def objects_left(moto_aws: MotoAws, setting: dict[str, str], prefix: str = PREFIX) -> list[str]:
    listed = moto_aws.client("s3").list_objects_v2(Bucket=setting["PY_BATCH_BUCKET"], Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


def test_the_example_maps_a_function_over_50_inputs_as_batch_jobs_and_sums_the_results(
    moto_aws: MotoAws, setting: dict[str, str], runs: dict[str, str]
) -> None:
    output = runs["python_on_batch"]
    assert "state=success" in output, output[-4000:]
    assert output.count("the sum of the squares of 0..49 is 40425") == 1, output[-4000:]
    jobs = re.findall(r"Submitted AWS Batch job (\S+) \(python_on_batch-heavy_computation-", output)
    assert len(set(jobs)) == len(jobs) == 50
    for x in range(50):  # the function's line, from the job's CloudWatch stream, once
        assert len(re.findall(rf"squaring {x} in AWS Batch job ({'|'.join(jobs)})\b", output)) == 1, x
    assert output.count("The image's Python (python_version): 3.11") == 50  # stated, and the worker's
    assert "(the bootstrap running heavy_computation(); not shown)" not in output  # the Slurm wording
    assert "python3 -c <the bootstrap running heavy_computation(); not shown>" in output
    assert "AIRFLOW_HPC_PAYLOAD" not in output  # the manifest is never logged
    assert "could not delete" not in output
    assert objects_left(moto_aws, setting, "airflow-hpc/python") == []  # the example's results, read and deleted


def test_a_function_returning_a_dict_with_multiple_outputs_gives_each_key_as_an_xcom(outcomes: str) -> None:
    describe = task_output(outcomes, "describe")
    assert re.search(r"Payload: \d+ bytes \(none\), in the job's environment", describe), describe[-3000:]
    (job_id,) = re.findall(r"Submitted AWS Batch job (\S+) \(", describe)
    assert f"AWS Batch job {job_id} ended SUCCEEDED" in describe
    assert "Pausing task as DEFERRED" not in describe  # watched on the worker: the same end
    assert f"outputs as XComs: sum=42 job={job_id}" in task_output(outcomes, "check_outputs")


def test_a_1_MB_argument_travels_through_s3_and_arrives_whole(outcomes: str) -> None:
    log = task_output(outcomes, "digest")
    assert re.search(
        rf"Payload: \d{{6}} bytes \(gzip\), stored at s3://payloads-\w+/{PREFIX}/\w+/try1\.payload", log
    ), log[-3000:]
    assert "the 1000000-character argument arrived whole" in task_output(outcomes, "compare")


def test_a_3_KB_argument_that_would_take_the_container_overrides_past_what_ecs_starts_goes_through_s3(
    outcomes: str,
) -> None:
    """Before: inline up to 16 KiB, so this job ended FAILED, "Container Overrides length must be at
    most 8192" (the stand-in fails it as ECS does)."""
    log = task_output(outcomes, "count_letters")
    stored = rf"Payload: \d+ bytes \(\w+\), stored at s3://payloads-\w+/{PREFIX}/\w+/try1\.payload"
    assert re.search(stored, log), log[-3000:]
    assert re.search(r"AWS Batch job \S+ ended SUCCEEDED", log), log[-3000:]
    assert "3000 letters in 3000 characters" in log, log[-3000:]


def test_a_raised_exception_fails_the_task_with_the_remote_traceback_in_its_log(outcomes: str) -> None:
    log = task_output(outcomes, "validate")
    assert re.search(r"AWS Batch job \S+ ended FAILED \(exit 1\)", log), log[-3000:]
    assert "the function raised ValueError: bad input 11: at most 10" in log
    traceback = log[log.index("Remote traceback:") :]
    assert re.search(r"line \d+, in validate\n.*line \d+, in check_input\nValueError: bad input 11", traceback)
    assert "new_state=failed" in log
    assert "Pausing task as DEFERRED" in log


def test_payloads_and_results_are_deleted_once_read(moto_aws: MotoAws, setting: dict[str, str], outcomes: str) -> None:
    assert "could not delete" not in outcomes
    assert objects_left(moto_aws, setting) == []


def test_an_image_stated_to_run_another_python_fails_the_task_before_anything_reaches_aws(
    moto_aws: MotoAws, setting: dict[str, str], outcomes: str
) -> None:
    log = task_output(outcomes, "on_python_312")
    worker = ".".join(str(part) for part in sys.version_info[:3])
    assert f"the image repo/python:3.12 runs Python 3.12 (python_version), the Airflow worker Python {worker}" in log, (
        log[-3000:]
    )
    assert "nothing was submitted" in log and "new_state=failed" in log
    assert "Submitted AWS Batch job" not in log and "Payload:" not in log
    queue = json.loads(setting["AIRFLOW_CONN_AWS_BATCH"])["extra"]["job_queue"]
    batch = moto_aws.client("batch")
    names = [
        job["jobName"]
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
        for job in batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]
    ]
    assert any(name.startswith("py_batch_outcomes-digest-") for name in names)  # the listing sees this run
    assert not [name for name in names if name.startswith("py_batch_outcomes-on_python_312-")]


def test_a_stated_python_of_another_minor_stops_the_worker_before_any_aws_call(
    aws: MotoAws, setting: dict[str, str]
) -> None:
    """The operator itself, without Airflow's runner: the refusal comes before the first call to
    AWS (no job, no stored payload, no job definition registered)."""
    queue = aws.make_queue(f"py-version-{uuid.uuid4().hex[:8]}", runs_containers=True)
    other = f"{sys.version_info.major}.{sys.version_info.minor + 1}"
    with DAG("batch_tests", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.batch(
            aws_conn_id=CONN_ID,
            image=f"repo/python:{other}",
            python_version=other,
            job_queue=queue,
            payload_bucket=setting["PY_BATCH_BUCKET"],
            payload_prefix=f"{PREFIX}/version",
        )
        def never_runs(data: bytes) -> int:
            return len(data)

        operator = never_runs(os.urandom(60_000)).operator  # past the inline limit: it would go to S3
    batch = aws.client("batch")
    definitions_before = batch.describe_job_definitions()["jobDefinitions"]
    with pytest.raises(RemotePythonError, match=rf"runs Python {other} \(python_version\), the Airflow worker Python"):
        operator.execute({"ti": FakeTI("never_runs")})
    assert batch.list_jobs(jobQueue=queue, jobStatus="SUBMITTED")["jobSummaryList"] == []
    assert batch.list_jobs(jobQueue=queue, jobStatus="RUNNING")["jobSummaryList"] == []
    assert batch.list_jobs(jobQueue=queue, jobStatus="SUCCEEDED")["jobSummaryList"] == []
    assert batch.describe_job_definitions()["jobDefinitions"] == definitions_before
    assert objects_left(aws, setting, f"{PREFIX}/version") == []


def big_sum(data: bytes, label: str) -> dict[str, object]:
    print(f"summing {label}")
    return {"label": label, "sum": sum(data)}


async def test_a_retry_adopts_the_job_its_crashed_worker_left_and_returns_that_jobs_result(
    aws: MotoAws, setting: dict[str, str]
) -> None:
    """Try 1 stores its payload in S3, submits and defers; its worker dies before the trigger runs.
    The job runs on. Try 2 adopts it (nothing is submitted or stored again), reads the result of
    *that* job by its id, and deletes try 1's payload with the result."""
    queue = aws.make_queue(f"adopt-python-{uuid.uuid4().hex[:8]}", runs_containers=True)
    task_id = f"py-adopt-{uuid.uuid4().hex[:6]}"
    run_id = uuid.uuid4().hex
    data = os.urandom(60_000)  # past the inline limit: the payload goes to S3
    with DAG("batch_tests", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.batch(
            task_id=task_id,
            aws_conn_id=CONN_ID,
            image="repo/python:3.11",
            job_queue=queue,
            payload_bucket=setting["PY_BATCH_BUCKET"],
            payload_prefix=f"{PREFIX}/adopt",
            poll_interval=0.5,
            multiple_outputs=True,
        )
        def adopted(data: bytes, label: str) -> dict[str, object]:
            return big_sum(data, label)

        operators = [adopted(data, "retried").operator, adopted(data, "retried").operator]
    for op in operators:
        op.task_id = task_id  # one task instance, two tries

    async def start(try_number: int) -> BatchJobTrigger:
        with pytest.raises(TaskDeferred) as deferred:
            ti = FakeTI(task_id, try_number=try_number, run_id=run_id)
            await asyncio.to_thread(operators[try_number - 1].execute, {"ti": ti})
        trigger = deferred.value.trigger
        assert isinstance(trigger, BatchJobTrigger)
        store = MemoryPositionStore()
        trigger.position_store = lambda: store  # type: ignore[method-assign]
        return trigger

    job_id = (await start(1)).job_id  # the worker died here: its trigger never runs
    stored = objects_left(aws, setting, f"{PREFIX}/adopt")
    assert len(stored) == 1 and stored[0].endswith("/try1.payload")
    trigger = await start(2)
    assert trigger.job_id == job_id
    events = [event async for event in trigger.run()]
    ti = FakeTI(task_id, try_number=2, run_id=run_id)
    value = await asyncio.to_thread(operators[1].execute_complete, {"ti": ti}, events[0])
    assert value == {"label": "retried", "sum": sum(data)}
    listed = aws.client("batch").list_jobs(jobQueue=queue, jobStatus="SUCCEEDED")["jobSummaryList"]
    assert [job["jobId"] for job in listed] == [job_id]  # nothing was submitted again
    assert objects_left(aws, setting, f"{PREFIX}/adopt") == []
