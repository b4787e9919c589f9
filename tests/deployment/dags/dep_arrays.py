"""Mapped Slurm tasks the triggerer submits as job arrays (docs/arrays.rst).

``dep_arrays``: twenty instances print their own numbered lines; one exits 3 (and is retried once),
one runs until a test marks it failed. ``dep_arrays_restart``: instances that print slowly while a
test kills the triggerer.
"""

from __future__ import annotations

from datetime import timedelta

from scenario_common import (
    ARRAY_FAILING_INDEX,
    ARRAY_LINES,
    ARRAY_RESTART_LINES,
    ARRAY_RESTART_TASKS,
    ARRAY_STOPPED_INDEX,
    ARRAY_TASKS,
    JOB_NAME,
    SLURM_CONN_ID,
    numbered_lines,
    scenario_dag,
)

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator


def element(index: int) -> str:
    lines = numbered_lines(ARRAY_LINES, f"el{index}", delay_s=0)
    if index == ARRAY_FAILING_INDEX:
        return f"{lines}; exit 3"
    if index == ARRAY_STOPPED_INDEX:
        return f"{lines}; sleep 600"
    return lines


with scenario_dag("dep_arrays"):
    SlurmSubmitOperator.partial(
        task_id="mapped",
        slurm_conn_id=SLURM_CONN_ID,
        job_name=JOB_NAME,
        poll_interval=2,
        retries=1,
        retry_delay=timedelta(seconds=1),
    ).expand(command=[element(index) for index in range(ARRAY_TASKS)])

with scenario_dag("dep_arrays_restart"):
    SlurmSubmitOperator.partial(
        task_id="mapped",
        slurm_conn_id=SLURM_CONN_ID,
        job_name=JOB_NAME,
        poll_interval=2,
    ).expand(command=[numbered_lines(ARRAY_RESTART_LINES, f"arr{i}", 0.5) for i in range(ARRAY_RESTART_TASKS)])
