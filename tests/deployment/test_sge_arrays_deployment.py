"""Mapped SgeOperator tasks as Grid Engine job arrays on a real Airflow deployment (docs/arrays.rst).

What only the real stack shows: mapped task instances deferring from their workers one by one and
meeting in the triggerer's collection window, Airflow retrying one instance, a user marking one
instance failed. Array jobs are counted by Grid Engine's accounting (the job numbers of the
elements the task logs name, each task's record). The test cluster's ``max_aj_tasks`` is 6.
"""

from __future__ import annotations

import math
import re
import time
import urllib.parse

import pytest

from airflow_hpc_provider.dialects.sge_status import parse_qacct, parse_queue
from tests.deployment.dags.scenario_common import ARRAY_FAILING_INDEX, ARRAY_LINES, ARRAY_STOPPED_INDEX, ARRAY_TASKS
from tests.deployment.stack import AirflowStack
from tests.deployment.test_slurm_arrays_deployment import log_of
from tests.deployment.test_slurm_deployment import line_report, numbered
from tests.integration import cluster

pytestmark = [pytest.mark.deployment, pytest.mark.cluster, pytest.mark.slow]

MAX_ARRAY_SIZE = 6
OUTPUT = re.compile(r"^el(\d+) line ")
SUBMITTED = re.compile(
    r"Submitted as Grid Engine array job (\d+\.\d+) \(array \d+, index \d+ of chunk \d+/\d+, map_index (\d+)\)"
)


def grid(command: str) -> str:
    return cluster.ssh(command, check=False, user="sgeuser")


def element_of(log: list[str], map_index: int) -> str | None:
    for line in log:
        match = SUBMITTED.search(line)
        if match and int(match.group(2)) == map_index:
            return match.group(1)
    return None


def listed(element: str) -> bool:
    """Whether Grid Engine still lists the element (its task's line, or its pending task list)."""
    return parse_queue(grid("qstat -xml -u sgeuser")).status(element) is not None


def accounted(job_numbers: set[str]) -> dict[str, dict[str, str]]:
    """Grid Engine's accounting of these array jobs: one record per task that ran."""
    records: dict[str, dict[str, str]] = {}
    for number in sorted(job_numbers):
        records.update(parse_qacct(grid(f"qacct -j {number}"))[0])
    return records


def test_twenty_mapped_sge_tasks_are_a_few_arrays_each_instance_with_its_own_log_state_retry_and_cancel(
    one_triggerer: AirflowStack,
) -> None:
    stack = one_triggerer
    dag_id = "dep_sge_arrays"
    run_id = stack.trigger(dag_id)
    elements: dict[int, str] = {}
    try:
        stopped = ARRAY_STOPPED_INDEX
        elements[stopped] = stack.wait(
            lambda: element_of(log_of(stack, dag_id, run_id, stopped), stopped), 240, f"map_index {stopped} submitted"
        )
        stack.wait(
            lambda: len(numbered(log_of(stack, dag_id, run_id, stopped), f"el{stopped}")) == ARRAY_LINES,
            120,
            f"map_index {stopped} to stream its lines",
        )
        marked = time.monotonic()
        stack.set_task_state(dag_id, run_id, "mapped", "failed", map_index=stopped)
        stack.wait(lambda: not listed(elements[stopped]), 60, f"element {elements[stopped]} deleted", interval_s=0.5)
        took = time.monotonic() - marked
        run = stack.wait_for_run_end(dag_id, run_id, 600)

        tis = {ti["map_index"]: ti for ti in stack.task_instances(dag_id, run_id)}
        expected = {i: "failed" if i in (stopped, ARRAY_FAILING_INDEX) else "success" for i in range(ARRAY_TASKS)}
        assert run["state"] == "failed"
        assert {i: ti["state"] for i, ti in tis.items()} == expected
        assert tis[ARRAY_FAILING_INDEX]["try_number"] == 2

        logs = {}
        for index in range(ARRAY_TASKS):
            for try_number in (1, 2) if index == ARRAY_FAILING_INDEX else (1,):
                log = stack.task_log(dag_id, run_id, "mapped", try_number, map_index=index)
                element = element_of(log, index)
                assert element, f"map_index {index} try {try_number}: no submission line"
                logs[(index, try_number)] = element
                missing, repeated = line_report(numbered(log, f"el{index}"), ARRAY_LINES)
                assert (missing, repeated) == ([], []), f"map_index {index} try {try_number}"
                others = [line for line in log if (m := OUTPUT.match(line)) and int(m.group(1)) != index]
                assert others == [], f"map_index {index} holds another element's output: {others[:3]}"
            if expected[index] == "success":  # each instance pushes its own element's id
                entry = stack.get(
                    f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/mapped"
                    "/xcomEntries/sge_job_id",
                    map_index=index,
                )
                assert str(entry["value"]).strip('"') == logs[(index, 1)]

        arrays = {element.partition(".")[0] for element in logs.values()}
        records = accounted(arrays)
        print(
            f"\n{dag_id}: {ARRAY_TASKS} mapped instances (+1 retry), max_aj_tasks {MAX_ARRAY_SIZE}: "
            f"{len(arrays)} array jobs, {len(records)} task records in accounting; element "
            f"{elements[stopped]} deleted {took:.1f}s after map_index {stopped} was marked failed"
        )
        # One task per instance and one for the retry of map_index 7: never the whole array again.
        assert sorted(records) == sorted(logs.values())
        assert len(arrays) <= math.ceil(ARRAY_TASKS / MAX_ARRAY_SIZE) + 2 + 1
        failed = {element: record["failed"].split()[0] for element, record in records.items()}
        exits = {element: record["exit_status"].split()[0] for element, record in records.items()}
        assert failed[elements[stopped]] == "100"  # deleted while running: only that task
        assert [exits[logs[(ARRAY_FAILING_INDEX, t)]] for t in (1, 2)] == ["3", "3"]
        assert sum(1 for value in failed.values() if value != "0") == 1
        retry_log = stack.task_log(dag_id, run_id, "mapped", 2, map_index=ARRAY_FAILING_INDEX)
        assert any("ended FAILED (exit 3" in line for line in retry_log), retry_log[-10:]
    finally:
        grid("qdel 'dep-sge-arrays*' >/dev/null 2>&1")  # leave nothing of ours on the shared cluster
