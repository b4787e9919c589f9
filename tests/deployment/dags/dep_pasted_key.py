"""A job on a connection made in the UI's form, with its private key pasted in (test_connection_form.py)."""

from __future__ import annotations

from scenario_common import JOB_NAME, scenario_dag

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

PASTED_KEY_CONN_ID = "slurm_pasted_key"

with scenario_dag("dep_pasted_key"):
    SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id=PASTED_KEY_CONN_ID,
        job_name=JOB_NAME,
        command='echo "reached the cluster with the key pasted into the form"',
        poll_interval=1,
    )
