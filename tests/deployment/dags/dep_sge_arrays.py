"""Mapped Grid Engine tasks the triggerer submits as job arrays (docs/arrays.rst, Grid Engine).

``dep_sge_arrays``: twenty instances print their own numbered lines; one exits 3 (and is retried
once), one runs until a test marks it failed. The test cluster's ``max_aj_tasks`` is 6.
"""

from __future__ import annotations

from datetime import timedelta

from scenario_common import (
    ARRAY_FAILING_INDEX,
    ARRAY_LINES,
    ARRAY_STOPPED_INDEX,
    ARRAY_TASKS,
    SGE_CONN_ID,
    numbered_lines,
    scenario_dag,
)

from airflow_hpc_provider.operators.sge import SgeOperator


def element(index: int) -> str:
    lines = numbered_lines(ARRAY_LINES, f"el{index}", delay_s=0)
    if index == ARRAY_FAILING_INDEX:
        return f"{lines}; exit 3"
    if index == ARRAY_STOPPED_INDEX:
        return f"{lines}; sleep 600"
    return lines


with scenario_dag("dep_sge_arrays"):
    SgeOperator.partial(
        task_id="mapped",
        sge_conn_id=SGE_CONN_ID,
        # Grid Engine's names are short and plain: the run is told apart by the element ids its logs name.
        job_name="dep-sge-arrays",
        poll_interval=2,
        retries=1,
        retry_delay=timedelta(seconds=1),
    ).expand(command=[element(index) for index in range(ARRAY_TASKS)])
