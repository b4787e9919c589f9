"""One small DAG per behaviour the integration tests check against the local Slurm cluster."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_hpc_provider.hooks.slurm import SlurmHook, submit_job
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

# Values a careless provider would let the shell interpret.
NASTY_VALUES = {
    "QUOTES": 'it\'s "quoted"',
    "SUBSHELL": "$(touch /tmp/airflow-hpc-injected) and `touch /tmp/airflow-hpc-injected`",
    "SEMICOLON": "a; touch /tmp/airflow-hpc-injected; b",
    "NEWLINES": "line one\nline two\n",
    "DOLLARS": "$HOME ${PATH} $$ \\n \\",
}
NASTY_JOB_NAME = 'name "with" $(touch /tmp/airflow-hpc-injected) `x`; y'


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["test"])


with _dag("it_success"):
    SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id="slurm_local",
        command='for i in 1 2 3 4 5; do echo "line $i of 5"; sleep 1; done\necho "stderr line" >&2',
        poll_interval=1,
        time_limit=5,
    )

with _dag("it_not_deferrable"):
    SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id="slurm_local",
        command='echo "worker-side line A"; sleep 2; echo "worker-side line B"',
        poll_interval=1,
        deferrable=False,
    )

with _dag("it_failed"):
    SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id="slurm_local",
        command='echo "about to fail"; exit 3',
        poll_interval=1,
    )

with _dag("it_out_of_memory"):
    # tail keeps a newline-free stream in memory: it grows past the 64 MiB cgroup limit.
    SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id="slurm_local",
        command='echo "allocating"; head -c 600M /dev/zero | tail; echo "survived?"',
        memory="64M",
        poll_interval=1,
    )

with _dag("it_time_limit"):
    SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id="slurm_local",
        command='echo "sleeping past the limit"; sleep 600',
        time_limit=1,
        poll_interval=2,
    )

with _dag("it_execution_timeout"):
    SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id="slurm_local",
        command='echo "long job started"; sleep 600',
        execution_timeout=timedelta(seconds=12),
        poll_interval=1,
    )

with _dag("it_env_verbatim"):
    SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id="slurm_local",
        command="\n".join(f'printf "{name}=%s\\n" "$(printf %s "${name}" | base64 -w0)"' for name in NASTY_VALUES),
        env=NASTY_VALUES,
        job_name=NASTY_JOB_NAME,
        poll_interval=1,
    )

with _dag("it_bad_account"):
    SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id="slurm_local",
        command="echo never",
        account="nosuchaccount",
    )

with _dag("it_adoption"):

    @task
    def earlier_try_left_a_job(**context: Any) -> str:
        """Plays a worker that submitted the job and died before Airflow recorded it."""
        ti = context["ti"]
        key = JobKey.for_task_instance(ti.dag_id, "job", ti.run_id, -1, 1)
        spec = JobSpec(command="", job_name="it_adoption.job")
        script = '#!/bin/bash\necho "output of the earlier try\'s job"\nsleep 5\n'

        async def submit() -> str:
            transport = SshTransport(SlurmHook("slurm_local").get_target())
            try:
                outcome = await submit_job(transport, spec, script, key=key, log_dir=".airflow-hpc/logs", env={})
            finally:
                await transport.close()
            assert outcome.job_id is not None and not outcome.adopted
            print(f"earlier try submitted job {outcome.job_id} with key {key.task_digest}")
            return outcome.job_id

        return asyncio.run(submit())

    earlier_try_left_a_job() >> SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id="slurm_local",
        command='echo "a second job: this must never run"',
        poll_interval=1,
    )
