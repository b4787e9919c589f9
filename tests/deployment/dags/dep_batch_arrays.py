"""Mapped Batch tasks the triggerer submits as array jobs (docs/arrays.rst): children held RUNNING
in moto, whose CloudWatch lines and ends the test writes."""

from __future__ import annotations

from datetime import timedelta

from scenario_common import BATCH_ARRAY_TASKS, BATCH_CONN_ID, scenario_dag

from airflow_hpc_provider.operators.batch import BatchRevisionOperator

with scenario_dag("dep_batch_arrays"):
    BatchRevisionOperator.partial(
        task_id="mapped",
        aws_conn_id=BATCH_CONN_ID,
        image="repo/dep-batch:1",
        command='echo "the test writes the lines of $SAMPLE"',
        poll_interval=2,
        # Closed by "every sibling is here" (Airflow's count): on a loaded machine the 12 instances
        # reach the triggerer over more than the default 10 s, which splits them into 3 arrays
        # (seen in CI), while the test counts exactly ceil(12 / 6) SubmitJobs.
        array_window=120,
        retries=1,
        retry_delay=timedelta(seconds=1),
    ).expand(env=[{"SAMPLE": f"s{index}"} for index in range(BATCH_ARRAY_TASKS)])
