"""Map a Slurm command over 50 inputs: 50 task instances, submitted as a few job arrays.

Each map index is its own Airflow task instance, with its own log, state, retry and cancel. The
triggerer gathers the instances that defer together and submits them as one ``sbatch --array`` per
chunk of at most ``MaxArraySize`` elements (6 on the local test cluster, so 9 arrays here; 1001 by
Slurm's default, so one). Each instance's ``SAMPLE`` reaches only its own element, through sbatch's
environment, never a file or a command line. See docs/arrays.rst.

Needs a ``slurm`` connection named ``slurm_local`` (``tests/cluster/up.sh`` writes one for the
local test cluster) and a running triggerer.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

SAMPLES = [f"sample_{number:02d}" for number in range(50)]

with DAG(
    dag_id="slurm_array_map",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_tasks=50,
    tags=["example", "slurm", "arrays"],
    doc_md=__doc__,
) as dag:
    SlurmSubmitOperator.partial(
        task_id="process",
        slurm_conn_id="slurm_local",
        memory="128M",
        time_limit=timedelta(minutes=10),
        command=(
            'echo "processing $SAMPLE as array element $SLURM_ARRAY_JOB_ID"_"$SLURM_ARRAY_TASK_ID on $(hostname)"\n'
            'for step in 1 2 3; do echo "$SAMPLE: step $step of 3"; sleep 0.2; done\n'
            'echo "$SAMPLE: done"'
        ),
        array_throttle=25,
        poll_interval=2,
        retries=1,
    ).expand(env=[{"SAMPLE": sample} for sample in SAMPLES])
