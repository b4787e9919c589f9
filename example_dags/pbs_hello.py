"""Run a small job on a PBS (Torque flavour) cluster and read its output in the task log.

Needs a ``pbs`` connection named ``pbs_local`` (``tests/cluster/up.sh`` writes one for the local
test cluster, whose qsub/qstat/qdel are the Torque-compatible wrappers around Slurm).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.pbs import PbsOperator

with DAG(
    dag_id="pbs_hello",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "pbs"],
    doc_md=__doc__,
) as dag:
    PbsOperator(
        task_id="hello",
        pbs_conn_id="pbs_local",
        command=(
            'echo "Hello from PBS job $PBS_JOBID on $(hostname)"\n'
            'for step in 1 2 3; do echo "step $step of 3: $GREETING"; sleep 1; done'
        ),
        env={"GREETING": "values reach the job verbatim: $(not run) `nor this`"},
        cpus=1,
        memory="256M",
        walltime=timedelta(minutes=5),
        poll_interval=1,
    )
