"""Map a Python function over 50 inputs as 50 AWS Batch jobs, then sum the results in Airflow.

``@task.batch`` runs the function in the job's container with the image's own ``python3``, which
needs cloudpickle and boto3 and the Airflow worker's major.minor (no Airflow), e.g. an image built
``FROM python:3.11-slim`` with ``pip install cloudpickle boto3``. ``python_version`` states that
major.minor, so a worker running another one fails the task before anything is queued (without it,
the job would fail when its container starts). The call travels in the job's environment (through
S3 past 16 KiB), the return value comes back through S3 and becomes the task's XCom, so ``total``
receives the 50 values.

Needs an ``aws`` connection named ``aws_batch`` whose extra names the job queue
(``{"region_name": "eu-west-1", "job_queue": "my-queue"}``), a bucket for payloads and results
(``PYTHON_ON_BATCH_BUCKET``), the image (``PYTHON_ON_BATCH_IMAGE``) and its Python's major.minor
(``PYTHON_ON_BATCH_IMAGE_PYTHON``, default 3.11). The jobs wait in the
triggerer, not in worker slots.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

PAYLOAD_BUCKET = os.environ.get("PYTHON_ON_BATCH_BUCKET", "my-airflow-payloads")
IMAGE = os.environ.get("PYTHON_ON_BATCH_IMAGE", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/python-tasks:3.11")
IMAGE_PYTHON = os.environ.get("PYTHON_ON_BATCH_IMAGE_PYTHON", "3.11")

with DAG(
    dag_id="python_on_batch",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "aws-batch", "python"],
    doc_md=__doc__,
) as dag:

    @task.batch(
        aws_conn_id="aws_batch",
        image=IMAGE,
        python_version=IMAGE_PYTHON,
        payload_bucket=PAYLOAD_BUCKET,
        vcpus=1,
        memory="512M",
        timeout=timedelta(minutes=10),
        poll_interval=1,
    )
    def heavy_computation(x: int) -> int:
        import os

        print(f"squaring {x} in AWS Batch job {os.environ['AWS_BATCH_JOB_ID']}")
        return x * x

    @task
    def total(values: list[int]) -> int:
        result = sum(values)
        print(f"the sum of the squares of 0..49 is {result}")
        return result

    total(heavy_computation.expand(x=list(range(50))))
