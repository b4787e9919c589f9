"""Mapped PBS tasks the triggerer submits as job arrays (docs/arrays.rst, *PBS*), on the
Torque-compatible wrappers: six instances print their own numbered lines; one exits 3 (and is
retried once), one runs until a test marks it failed.
"""

from __future__ import annotations

from datetime import timedelta

from scenario_common import (
    JOB_NAME,
    PBS_ARRAY_FAILING_INDEX,
    PBS_ARRAY_LINES,
    PBS_ARRAY_STOPPED_INDEX,
    PBS_ARRAY_TASKS,
    PBS_CONN_ID,
    numbered_lines,
    scenario_dag,
)

from airflow_hpc_provider.operators.pbs import PbsOperator


def element(index: int) -> str:
    lines = numbered_lines(PBS_ARRAY_LINES, f"pel{index}", delay_s=0)
    if index == PBS_ARRAY_FAILING_INDEX:
        return f"{lines}; exit 3"
    if index == PBS_ARRAY_STOPPED_INDEX:
        return f"{lines}; sleep 600"
    return lines


with scenario_dag("dep_pbs_arrays"):
    PbsOperator.partial(
        task_id="mapped",
        pbs_conn_id=PBS_CONN_ID,
        job_name=JOB_NAME,
        poll_interval=2,
        retries=1,
        retry_delay=timedelta(seconds=1),
    ).expand(command=[element(index) for index in range(PBS_ARRAY_TASKS)])
