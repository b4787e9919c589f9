"""Run a command on AWS Batch and read its CloudWatch lines in the task log.

Needs an ``aws`` connection named ``aws_batch`` whose extra names the job queue
(``{"region_name": "eu-west-1", "job_queue": "my-queue"}``). The definition is registered
automatically from the image (``job_definition_mode="auto"``); the job waits in the triggerer.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.batch import BatchRevisionOperator

with DAG(
    dag_id="batch_hello",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "aws-batch"],
    doc_md=__doc__,
) as dag:
    BatchRevisionOperator(
        task_id="hello",
        aws_conn_id="aws_batch",
        image="public.ecr.aws/docker/library/bash:5.2",
        command='echo "Hello from AWS Batch job $AWS_BATCH_JOB_ID, run {{ run_id }}: $GREETING"',
        env={"GREETING": "values travel through the Batch API: $(not run)"},
        vcpus=1,
        memory="512M",
        timeout=timedelta(minutes=10),
        retry_attempts=2,
        poll_interval=2,
        execution_timeout=timedelta(minutes=30),
    )
