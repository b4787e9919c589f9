"""Run a container on a throw-away EC2 instance reached only through SSM, no inbound port 22.

Needs an ``aws`` connection named ``aws_ec2`` whose extra holds the infrastructure, e.g.::

    {"region_name": "eu-west-1",
     "ec2": {"ami_id": "ami-...", "subnet_id": "subnet-...", "security_group_ids": ["sg-..."],
             "instance_profile": "airflow-hpc-ec2-task", "max_instances": 10,
             "instance_types": {"default": "t3.small", "big": "m6i.2xlarge"}}}

and the AWS CLI v2 with the Session Manager plugin on the Airflow hosts (docs: operators/ec2_ephemeral).
The instance is terminated when the task ends, whatever the outcome.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.ec2 import Ec2EphemeralOperator

with DAG(
    dag_id="ec2_hello",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "aws-ec2"],
    doc_md=__doc__,
) as dag:
    Ec2EphemeralOperator(
        task_id="hello",
        aws_conn_id="aws_ec2",
        image="public.ecr.aws/docker/library/bash:5.2",
        command=(
            'echo "Hello from run {{ run_id }} on $(hostname)"\n'
            'echo "token has $(printf %s "$API_TOKEN" | wc -c) characters"\n'
        ),
        # Travels over the SSM tunnel into the container's environment: never in user-data or logs.
        env={"API_TOKEN": "not-a-real-token-$(not run)"},
        time_limit=timedelta(minutes=30),
        startup_timeout=timedelta(minutes=10),
        poll_interval=2,
        execution_timeout=timedelta(hours=1),
    )
