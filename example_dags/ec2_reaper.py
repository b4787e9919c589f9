"""Find (and, with ``dry_run=False``, terminate) EC2 instances of this provider whose task is over.

Instances normally end with their task, and their own safety timer powers them off in any case; this
catches the rest sooner (e.g. a task marked success while the triggerer was down). Run it hourly.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.ec2_reaper import Ec2ReaperOperator

with DAG(
    dag_id="ec2_reaper",
    schedule=None,  # e.g. "@hourly" in production
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "aws-ec2"],
    doc_md=__doc__,
) as dag:
    Ec2ReaperOperator(
        task_id="reap",
        aws_conn_id="aws_ec2",
        dry_run=True,
        min_age=timedelta(minutes=15),
    )
