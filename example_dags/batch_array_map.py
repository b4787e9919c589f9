"""Map an AWS Batch command over 50 inputs: 50 task instances, submitted as one array job.

Each map index is its own Airflow task instance, with its own log (its child's CloudWatch stream),
state, retry and stop. The triggerer gathers the instances that defer together and submits them as
one ``SubmitJob`` with ``arrayProperties.size`` (more only where their values do not fit one
request: ECS takes 8,192 characters of container overrides; 50 short ``SAMPLE`` values fit one).
Each instance's ``SAMPLE`` reaches only its own child, in the job's environment, never on its
command line. See docs/arrays.rst.

Needs an ``aws`` connection named ``aws_batch`` whose extra names the job queue
(``{"region_name": "eu-west-1", "job_queue": "my-queue"}``) and a running triggerer. Under
``airflow dags test`` the instances run one at a time, each as a job of its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.batch import BatchRevisionOperator

SAMPLES = [f"sample_{number:02d}" for number in range(50)]

with DAG(
    dag_id="batch_array_map",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_tasks=50,
    tags=["example", "aws-batch", "arrays"],
    doc_md=__doc__,
) as dag:
    BatchRevisionOperator.partial(
        task_id="process",
        aws_conn_id="aws_batch",
        image="public.ecr.aws/docker/library/bash:5.2",
        command=(
            'echo "processing $SAMPLE as child $AWS_BATCH_JOB_ID (index $AWS_BATCH_JOB_ARRAY_INDEX)"\n'
            'for step in 1 2 3; do echo "$SAMPLE: step $step of 3"; sleep 1; done\n'
            'echo "$SAMPLE: done"'
        ),
        vcpus=1,
        memory="512M",
        timeout=timedelta(minutes=10),
        poll_interval=5,
        retries=1,
    ).expand(env=[{"SAMPLE": sample} for sample in SAMPLES])
