"""Mapped PbsOperator tasks as PBS job arrays on a real Airflow deployment (docs/arrays.rst, *PBS*),
on the Torque-compatible wrappers around Slurm.

What only the real stack shows: the operator deferring each mapped instance from its worker to a
PbsArrayElementTrigger, the triggerer submitting them together, Airflow retrying one instance and
a user marking one failed (the triggerer's on_kill must cancel that element alone: the wrappers'
``qdel '123[4]'`` would delete the whole array). Submissions are counted by slurmctld (``sdiag``:
each ``qsub -t`` is one sbatch behind the wrapper).
"""

from __future__ import annotations

import math
import re
import time
import urllib.parse

import pytest

from tests.deployment.conftest import job_state
from tests.deployment.dags.scenario_common import (
    PBS_ARRAY_FAILING_INDEX,
    PBS_ARRAY_LINES,
    PBS_ARRAY_STOPPED_INDEX,
    PBS_ARRAY_TASKS,
)
from tests.deployment.stack import AirflowStack, StackError
from tests.deployment.test_slurm_arrays_deployment import MAX_ARRAY_SIZE, sdiag_submissions
from tests.deployment.test_slurm_deployment import line_report, numbered
from tests.integration import cluster

pytestmark = [pytest.mark.deployment, pytest.mark.cluster, pytest.mark.slow]

OUTPUT = re.compile(r"^pel(\d+) line ")
SUBMITTED = re.compile(
    r"Submitted as PBS array job (\d+)\[(\d+)\] \(array \d+, index \d+ of chunk \d+/\d+, map_index (\d+)\)"
)


def element_of(log: list[str], map_index: int) -> str | None:
    """The element's Slurm name (``123_4``) for the PBS id (``123[4]``) the task log says."""
    for line in log:
        match = SUBMITTED.search(line)
        if match and int(match.group(3)) == map_index:
            return f"{match.group(1)}_{match.group(2)}"
    return None


def arrays_named_as(element: str) -> set[str]:
    """The arrays slurmctld accounted under the job name of ``element`` (the name holds the group's
    digest, which holds the run id): the submissions of this run, whoever else uses the cluster
    (sdiag counts every user's)."""
    name = cluster.ssh(f"sacct -n -X -P -j {element} -o JobName%200", check=False).split()[0]
    listed = cluster.ssh(f"sacct -n -X -P -S now-1days --name={name} -o JobID", check=False).split()
    return {job_id.split("_")[0] for job_id in listed}


def log_of(stack: AirflowStack, dag_id: str, run_id: str, map_index: int, try_number: int = 1) -> list[str]:
    try:
        return stack.task_log(dag_id, run_id, "mapped", try_number, map_index=map_index)
    except StackError:
        return []


def test_mapped_pbs_tasks_are_one_qsub_array_each_instance_with_its_own_log_xcom_retry_and_cancel(
    one_triggerer: AirflowStack,
) -> None:
    stack = one_triggerer
    dag_id = "dep_pbs_arrays"
    before = sdiag_submissions()
    run_id = stack.trigger(dag_id)
    elements: list[str] = []
    try:
        stopped = PBS_ARRAY_STOPPED_INDEX
        element = stack.wait(
            lambda: element_of(log_of(stack, dag_id, run_id, stopped), stopped), 240, f"map_index {stopped} submitted"
        )
        elements.append(element)
        stack.wait(
            lambda: len(numbered(log_of(stack, dag_id, run_id, stopped), f"pel{stopped}")) == PBS_ARRAY_LINES,
            120,
            f"map_index {stopped} to stream its lines",
        )
        marked = time.monotonic()
        stack.set_task_state(dag_id, run_id, "mapped", "failed", map_index=stopped)
        stack.wait(lambda: job_state(element) == "CANCELLED", 60, f"element {element} CANCELLED", interval_s=0.5)
        took = time.monotonic() - marked
        run = stack.wait_for_run_end(dag_id, run_id, 600)

        sbatch_calls = sdiag_submissions() - before
        submissions = arrays_named_as(element)
        tis = {ti["map_index"]: ti for ti in stack.task_instances(dag_id, run_id)}
        print(
            f"\n{dag_id}: {PBS_ARRAY_TASKS} mapped PBS instances (+1 retry): {len(submissions)} qsub -t submissions "
            f"in Slurm's accounting ({sbatch_calls} sbatch calls by sdiag, from every user of the shared cluster); "
            f"element {element} CANCELLED {took:.1f}s after map_index {stopped} was marked failed"
        )
        assert run["state"] == "failed"
        failed = (stopped, PBS_ARRAY_FAILING_INDEX)
        expected = {i: "failed" if i in failed else "success" for i in range(PBS_ARRAY_TASKS)}
        assert {i: ti["state"] for i, ti in tis.items()} == expected
        assert tis[PBS_ARRAY_FAILING_INDEX]["try_number"] == 2
        assert len(submissions) <= math.ceil(PBS_ARRAY_TASKS / MAX_ARRAY_SIZE) + 2 + 1

        for index in range(PBS_ARRAY_TASKS):
            for try_number in (1, 2) if index == PBS_ARRAY_FAILING_INDEX else (1,):
                log = log_of(stack, dag_id, run_id, index, try_number)
                name = element_of(log, index)
                assert name, f"map_index {index} try {try_number}: no submission line"
                elements.append(name)
                missing, repeated = line_report(numbered(log, f"pel{index}"), PBS_ARRAY_LINES)
                assert (missing, repeated) == ([], []), f"map_index {index} try {try_number}"
                others = [line for line in log if (m := OUTPUT.match(line)) and int(m.group(1)) != index]
                assert others == [], f"map_index {index} holds another element's output: {others[:3]}"
            if expected[index] == "success":  # each instance pushes its own element's PBS id
                entry = stack.get(
                    f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/mapped"
                    "/xcomEntries/pbs_job_id",
                    map_index=index,
                )
                assert str(entry["value"]).strip('"') == name.replace("_", "[") + "]"
        # One element per instance and one job for the retry: the others ran to their end.
        assert len(set(elements)) == PBS_ARRAY_TASKS + 1
        states = {name: job_state(name) for name in set(elements)}
        assert sorted(states.values()) == sorted(["COMPLETED"] * (PBS_ARRAY_TASKS - 2) + ["FAILED"] * 2 + ["CANCELLED"])
        retry_log = log_of(stack, dag_id, run_id, PBS_ARRAY_FAILING_INDEX, 2)
        assert any(re.search(r"ended FAILED .*exit 3", line) for line in retry_log), retry_log[-10:]
    finally:
        if elements:  # nothing left running for the next test, whatever failed here
            cluster.ssh("scancel " + " ".join(sorted(set(elements))), check=False)
