"""DAGs for the Airflow conventions every operator follows (tests/integration/test_operator_conventions.py).

``conv_tasks`` holds one task per convention; ``airflow dags test`` runs them one after another
in one process, so the whole set costs one Airflow start.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator


def _dag(dag_id: str, **kwargs: object) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["test"], **kwargs)


with _dag(
    "conv_tasks",
    params={"model": "resnet", "epochs": 3, "partition": "debug", "cpus": 2, "memory": "128M", "minutes": 5},
):
    SlurmSubmitOperator(task_id="script_file", slurm_conn_id="slurm_local", script="jobs/train.sbatch", poll_interval=1)
    SlurmSubmitOperator(
        task_id="templated_resources",
        slurm_conn_id="{{ 'slurm_' ~ 'local' }}",
        command='echo "partition=$SLURM_JOB_PARTITION cpus=$SLURM_CPUS_PER_TASK"\n'
        'scontrol show job "$SLURM_JOB_ID" | grep -o "TimeLimit=[^ ]*"',
        partition="{{ params.partition }}",
        cpus="{{ params.cpus }}",  # type: ignore[arg-type]
        memory="{{ params.memory }}",
        time_limit="{{ params.minutes }}",
        poll_interval=1,
    )
    SlurmSubmitOperator(
        task_id="templated_bad_cpus",
        slurm_conn_id="slurm_local",
        command="echo never",
        cpus="{{ params.model }}",  # type: ignore[arg-type]
        retries=3,
        retry_delay=timedelta(seconds=1),
    )
    SlurmSubmitOperator(
        task_id="bad_account",
        slurm_conn_id="slurm_local",
        command="echo never",
        account="nosuchaccount",
        retries=3,
        retry_delay=timedelta(seconds=1),
    )
    SlurmSubmitOperator(
        task_id="skipped_exit",
        slurm_conn_id="slurm_local",
        command='echo "nothing to do today"; exit 99',
        skip_on_exit_code=[99, 100],
        poll_interval=1,
    )
    SlurmSubmitOperator(
        task_id="failed_exit",
        slurm_conn_id="slurm_local",
        command="exit 3",
        skip_on_exit_code=99,
        poll_interval=1,
    )

with _dag("conv_default_deferrable"):
    SlurmSubmitOperator(
        task_id="job", slurm_conn_id="slurm_local", command='echo "where am I watched?"', poll_interval=1
    )
