"""Run a small job on a Grid Engine cluster and read its output in the task log.

Needs an ``sge`` connection named ``sge_local`` (``tests/cluster/up.sh`` writes one for the local
test cluster's Son of Grid Engine, reached over the same sshd as user ``sgeuser``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.sge import SgeOperator

with DAG(
    dag_id="sge_hello",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "sge"],
    doc_md=__doc__,
) as dag:
    SgeOperator(
        task_id="hello",
        sge_conn_id="sge_local",
        command=(
            'echo "Hello from Grid Engine job $JOB_ID on $(hostname), queue $QUEUE, $NSLOTS slot(s)"\n'
            'for step in 1 2 3; do echo "step $step of 3: $GREETING"; sleep 1; done'
        ),
        env={"GREETING": "values reach the job verbatim: $(not run) `nor this`"},
        cpus=1,
        memory="256M",
        time_limit=timedelta(minutes=5),
        poll_interval=1,
    )
