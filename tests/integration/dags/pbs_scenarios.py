"""One small DAG per PBS behaviour the integration tests check, against the Torque-style wrappers."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.pbs import PbsOperator

NASTY_VALUES = {
    "QUOTES": 'it\'s "quoted"',
    "SUBSHELL": "$(touch /tmp/airflow-hpc-injected) and `touch /tmp/airflow-hpc-injected`",
    "SEMICOLON": "a; touch /tmp/airflow-hpc-injected; b",
    "NEWLINES": "line one\nline two\n",
}
NASTY_JOB_NAME = 'pbs "name" $(touch /tmp/airflow-hpc-injected); x'


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["test"])


with _dag("pbs_failed"):
    PbsOperator(task_id="job", pbs_conn_id="pbs_local", command='echo "about to fail"; exit 3', poll_interval=1)

with _dag("pbs_walltime"):
    PbsOperator(
        task_id="job",
        pbs_conn_id="pbs_local",
        command='echo "sleeping past the walltime"; sleep 600',
        walltime=1,
        poll_interval=2,
    )

with _dag("pbs_execution_timeout"):
    PbsOperator(
        task_id="job",
        pbs_conn_id="pbs_local",
        command='echo "long job started"; sleep 600',
        execution_timeout=timedelta(seconds=12),
        poll_interval=1,
    )

with _dag("pbs_unknown_queue"):
    PbsOperator(task_id="job", pbs_conn_id="pbs_local", command="echo never", pbs_queue="nosuchqueue")

with _dag("pbs_env_verbatim"):
    PbsOperator(
        task_id="job",
        pbs_conn_id="pbs_local",
        command="\n".join(f'printf "{name}=%s\\n" "$(printf %s "${name}" | base64 -w0)"' for name in NASTY_VALUES),
        env=NASTY_VALUES,
        job_name=NASTY_JOB_NAME,
        poll_interval=1,
    )
