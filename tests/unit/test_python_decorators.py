"""``@task.slurm``, ``@task.pbs``, ``@task.sge`` and ``@task.batch`` as a DAG author meets them: registered,
checked when parsed."""

from __future__ import annotations

from datetime import datetime

import pytest
from airflow.sdk import DAG, task

from airflow_hpc_provider.decorators.batch import BatchPythonOperator
from airflow_hpc_provider.decorators.pbs import PbsPythonOperator
from airflow_hpc_provider.decorators.sge import SgePythonOperator
from airflow_hpc_provider.decorators.slurm import SlurmPythonOperator
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.get_provider_info import get_provider_info


def test_the_provider_registers_its_task_decorators_and_airflow_finds_them() -> None:
    names = {entry["name"] for entry in get_provider_info()["task-decorators"]}
    assert {"slurm", "pbs", "sge", "batch"} <= names
    with DAG("decorators", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.slurm(slurm_conn_id="hpc", cpus=2, memory="1G", setup=["module load python/3.11"])
        def on_slurm(x: int) -> int:
            return x

        @task.pbs(pbs_conn_id="pbs", cpus=2)
        def on_pbs(x: int) -> int:
            return x

        @task.sge(sge_conn_id="sge", cpus=2, sge_queue="all.q", parallel_environment="smp")
        def on_sge(x: int) -> int:
            return x

        @task.batch(aws_conn_id="aws", image="repo/python:3.11", payload_bucket="payloads", vcpus=2, memory="1G")
        def on_batch(x: int) -> int:
            return x

        slurm_task = on_slurm(1).operator
        pbs_task = on_pbs(1).operator
        sge_task = on_sge(1).operator
        batch_task = on_batch(1).operator
    assert isinstance(slurm_task, SlurmPythonOperator) and isinstance(pbs_task, PbsPythonOperator)
    assert isinstance(sge_task, SgePythonOperator) and sge_task.sge_queue == "all.q"
    assert sge_task.job_resources.cpus == 2 and "parallel_environment" in sge_task.template_fields
    assert "op_kwargs" in sge_task.template_fields and "command" not in sge_task.template_fields
    assert isinstance(batch_task, BatchPythonOperator) and batch_task.memory_mb == 1024
    assert "op_kwargs" in batch_task.template_fields and "command" not in batch_task.template_fields
    assert slurm_task.job_resources.cpus == 2 and slurm_task.setup == ["module load python/3.11"]
    assert "op_kwargs" in slurm_task.template_fields and "command" not in slurm_task.template_fields


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"command": "echo hi"}, "command= is not for a decorated function"),
        ({"python": "python3\nrm -rf ~"}, "give one interpreter"),
        ({"cleanup": "never"}, "cleanup='never'"),
        ({"cpus": "many"}, "cpus"),
    ],
)
def test_arguments_that_cannot_work_fail_when_the_dag_is_parsed(arguments: dict[str, object], message: str) -> None:
    with DAG("refusals", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.slurm(slurm_conn_id="hpc", **arguments)
        def function() -> None:
            return None

        with pytest.raises(JobSpecError, match=message):
            function()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"command": "echo hi"}, "command= is not for a decorated function"),
        ({"gpus": 1}, "GPU"),
        ({"sge_queue": "all.q; rm -rf ~"}, "sge_queue"),
    ],
)
def test_grid_engine_arguments_that_cannot_work_fail_when_the_dag_is_parsed(
    arguments: dict[str, object], message: str
) -> None:
    with DAG("sge_refusals", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.sge(sge_conn_id="sge", **arguments)
        def function() -> None:
            return None

        with pytest.raises(JobSpecError, match=message):
            function()


BATCH = {"aws_conn_id": "aws", "image": "repo/python:3.11", "payload_bucket": "payloads"}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({**BATCH, "payload_bucket": None}, "payload_bucket=None: give the name of an S3 bucket"),
        ({**BATCH, "payload_bucket": "s3://payloads"}, "payload_bucket='s3://payloads'"),
        ({**BATCH, "payload_bucket": "Payloads_Bucket"}, "payload_bucket='Payloads_Bucket'"),
        ({**BATCH, "payload_prefix": "/"}, "payload_prefix='/': give a key prefix"),
        ({**BATCH, "payload_prefix": "runs/{user}"}, "payload_prefix: .* names"),
        ({**BATCH, "command": "echo hi"}, "command= is not for a decorated function"),
        ({**BATCH, "job_id": "abc"}, "job_id= is not for a decorated function"),
        ({**BATCH, "wait_for_completion": False}, "waits for its result"),
        ({**BATCH, "env": {"AIRFLOW_HPC_PAYLOAD": "x"}}, "the manifest's own variable"),
        ({**BATCH, "vcpus": 0.5}, "fractions are Fargate only"),
        ({**BATCH, "cleanup": "never"}, "cleanup='never'"),
        ({**BATCH, "python_version": "3"}, r"python_version='3': .* is not a Python version"),
        ({**BATCH, "python_version": 3.11}, "python_version=3.11: give it as text"),
    ],
)
def test_batch_arguments_that_cannot_work_fail_when_the_dag_is_parsed(
    arguments: dict[str, object], message: str
) -> None:
    with DAG("batch_refusals", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.batch(**arguments)
        def function() -> None:
            return None

        with pytest.raises(JobSpecError, match=message):
            function()
