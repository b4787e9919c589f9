"""The Grid Engine behaviours the integration tests check, as tasks of ONE DAG: one ``airflow dags
test`` runs them all, which keeps the added CI time small (each run starts a whole Airflow)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.sge import SgeOperator

NASTY_VALUES = {
    "QUOTES": 'it\'s "quoted"',
    "SUBSHELL": "$(touch /tmp/airflow-hpc-sge-injected) and `touch /tmp/airflow-hpc-sge-injected`",
    "SEMICOLON": "a; touch /tmp/airflow-hpc-sge-injected; b",
    "NEWLINES": "line one\nline two\n",
}
NASTY_JOB_NAME = 'sge "name" $(touch /tmp/airflow-hpc-sge-injected); x'

with DAG(dag_id="sge_scenarios", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["test"]):
    SgeOperator(task_id="exit_3", sge_conn_id="sge_local", command='echo "about to fail"; exit 3', poll_interval=1)
    SgeOperator(
        task_id="h_rt",
        sge_conn_id="sge_local",
        command='echo "sleeping past h_rt"; sleep 600',
        time_limit=timedelta(seconds=3),
        poll_interval=1,
    )
    SgeOperator(
        task_id="verbatim",
        sge_conn_id="sge_local",
        command="\n".join(f'printf "{name}=%s\\n" "$(printf %s "${name}" | base64 -w0)"' for name in NASTY_VALUES),
        env=NASTY_VALUES,
        job_name=NASTY_JOB_NAME,
        poll_interval=1,
    )
