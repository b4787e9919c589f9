"""20 Slurm jobs of 30 s on an Airflow with 2 worker slots (core.parallelism=2): they wait deferred."""

from __future__ import annotations

from scenario_common import JOB_NAME, SLURM_CONN_ID, WORKER_SLOT_JOB_S, WORKER_SLOT_TASKS, scenario_dag

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

with scenario_dag("dep_worker_slots"):
    for index in range(WORKER_SLOT_TASKS):
        SlurmSubmitOperator(
            task_id=f"job_{index:02d}",
            slurm_conn_id=SLURM_CONN_ID,
            job_name=JOB_NAME,
            command=f"sleep {WORKER_SLOT_JOB_S}; echo done",
            poll_interval=2,
        )
