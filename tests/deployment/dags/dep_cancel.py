"""Long jobs a test stops: marked failed or cleared through the REST API, or past execution_timeout."""

from __future__ import annotations

from datetime import timedelta

from scenario_common import JOB_NAME, PBS_CONN_ID, SLURM_CONN_ID, numbered_lines, scenario_dag

from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

for scenario in ("mark_failed", "clear"):
    with scenario_dag(f"dep_{scenario}"):
        SlurmSubmitOperator(
            task_id="job",
            slurm_conn_id=SLURM_CONN_ID,
            job_name=JOB_NAME,
            command=numbered_lines(600, scenario),
            poll_interval=2,
        )

with scenario_dag("dep_execution_timeout"):
    SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id=SLURM_CONN_ID,
        job_name=JOB_NAME,
        command=numbered_lines(600, "timeout"),
        poll_interval=2,
        execution_timeout=timedelta(seconds=20),
    )

with scenario_dag("dep_pbs_mark_failed"):
    PbsOperator(
        task_id="job",
        pbs_conn_id=PBS_CONN_ID,
        job_name=JOB_NAME,
        command=numbered_lines(600, "pbs"),
        poll_interval=2,
    )
