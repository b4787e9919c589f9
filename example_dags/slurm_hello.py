"""Run a small job on a Slurm cluster and read its output in the task log.

Needs a ``slurm`` connection named ``slurm_local`` (``tests/cluster/up.sh`` writes one for the
local test cluster). The job waits in the triggerer, not in a worker slot.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

with DAG(
    dag_id="slurm_hello",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "slurm"],
    doc_md=__doc__,
) as dag:
    SlurmSubmitOperator(
        task_id="hello",
        slurm_conn_id="slurm_local",
        command=(
            'echo "Hello from Slurm job $SLURM_JOB_ID on $(hostname), run {{ run_id }}"\n'
            'for step in 1 2 3; do echo "step $step of 3: $GREETING"; sleep 2; done\n'
            'echo "done"'
        ),
        env={"GREETING": "values reach the job verbatim: $(not run) `nor this`"},
        cpus=1,
        memory="256M",
        time_limit=timedelta(minutes=5),
        poll_interval=2,
    )
