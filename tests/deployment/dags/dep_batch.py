"""AWS Batch tasks on the real stack: jobs held RUNNING in moto, whose CloudWatch lines the test writes."""

from __future__ import annotations

from scenario_common import BATCH_CONN_ID, BATCH_QUIET_TASKS, BATCH_RESTART_TASKS, scenario_dag

from airflow_hpc_provider.operators.batch import BatchRevisionOperator

for dag_id, tasks in (("dep_batch_restart", BATCH_RESTART_TASKS), ("dep_batch_quiet", BATCH_QUIET_TASKS)):
    with scenario_dag(dag_id):
        for index in range(tasks):
            BatchRevisionOperator(
                task_id=f"job_{index}",
                aws_conn_id=BATCH_CONN_ID,
                image="repo/dep-batch:1",
                command="echo the test writes this job's CloudWatch lines",
                poll_interval=2,
            )
