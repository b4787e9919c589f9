"""Mapped SlurmSubmitOperator tasks as Slurm job arrays on a real Airflow deployment (docs/arrays.rst).

What only the real stack shows: mapped task instances deferring from their workers one by one and
meeting in the triggerer's collection window, Airflow retrying one instance, a user marking one
instance failed, a triggerer SIGKILLed while elements stream. Submissions are counted by slurmctld
(``sdiag``); jobs by Slurm's accounting. The test cluster's ``MaxArraySize`` is 6.
"""

from __future__ import annotations

import math
import re
import signal
import time
import urllib.parse

import pytest

from tests.deployment.conftest import cancel_jobs_named, jobs_named
from tests.deployment.dags.scenario_common import (
    ARRAY_FAILING_INDEX,
    ARRAY_LINES,
    ARRAY_RESTART_LINES,
    ARRAY_RESTART_TASKS,
    ARRAY_STOPPED_INDEX,
    ARRAY_TASKS,
)
from tests.deployment.stack import AirflowStack, StackError
from tests.deployment.test_delivery import check_delivery
from tests.deployment.test_slurm_deployment import job_prefix, line_report, numbered, wait_cancelled
from tests.integration import cluster

pytestmark = [pytest.mark.deployment, pytest.mark.cluster, pytest.mark.slow]

MAX_ARRAY_SIZE = 6
OUTPUT = re.compile(r"^el(\d+) line ")
SUBMITTED = re.compile(
    r"Submitted as Slurm array job (\d+_\d+) \(array \d+, index \d+ of chunk \d+/\d+, map_index (\d+)\)"
)


def sdiag_submissions() -> int:
    """REQUEST_SUBMIT_BATCH_JOB as slurmctld counts it: one per sbatch, whatever the client believes."""
    match = re.search(r"REQUEST_SUBMIT_BATCH_JOB\s+\(\s*\d+\)\s+count:(\d+)", cluster.ssh("sdiag"))
    return int(match.group(1)) if match else 0


def element_of(log: list[str], map_index: int) -> str | None:
    """The element id the task log says this instance was submitted as."""
    for line in log:
        match = SUBMITTED.search(line)
        if match and int(match.group(2)) == map_index:
            return match.group(1)
    return None


def pushed_job_id(stack: AirflowStack, dag_id: str, run_id: str, map_index: int, task_id: str = "mapped") -> str:
    entry = stack.get(
        f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
        "/xcomEntries/slurm_job_id",
        map_index=map_index,
    )
    return str(entry["value"]).strip('"')


def log_of(stack: AirflowStack, dag_id: str, run_id: str, map_index: int, task_id: str = "mapped") -> list[str]:
    """The instance's first try's task log; empty while Airflow has not made the instance yet."""
    try:
        return stack.task_log(dag_id, run_id, task_id, 1, map_index=map_index)
    except StackError:
        return []


def test_twenty_mapped_tasks_are_a_handful_of_submissions_each_instance_with_its_own_log_state_retry_and_cancel(
    one_triggerer: AirflowStack,
) -> None:
    stack = one_triggerer
    dag_id = "dep_arrays"
    before = sdiag_submissions()
    run_id = stack.trigger(dag_id)
    try:
        stopped = ARRAY_STOPPED_INDEX
        element = stack.wait(
            lambda: element_of(log_of(stack, dag_id, run_id, stopped), stopped),
            240,
            f"map_index {stopped} to be submitted",
        )
        stack.wait(
            lambda: (
                len(numbered(stack.task_log(dag_id, run_id, "mapped", 1, map_index=stopped), f"el{stopped}"))
                == ARRAY_LINES
            ),
            120,
            f"map_index {stopped} to stream its lines",
        )
        marked = time.monotonic()
        stack.set_task_state(dag_id, run_id, "mapped", "failed", map_index=stopped)
        took = wait_cancelled(stack, element, marked)
        run = stack.wait_for_run_end(dag_id, run_id, 600)

        submissions = sdiag_submissions() - before
        jobs = jobs_named(job_prefix(run_id))
        tis = {ti["map_index"]: ti for ti in stack.task_instances(dag_id, run_id)}
        print(
            f"\n{dag_id}: {ARRAY_TASKS} mapped instances (+1 retry), MaxArraySize {MAX_ARRAY_SIZE}: "
            f"{submissions} sbatch calls (sdiag), {len(jobs)} jobs in accounting; element {element} "
            f"CANCELLED {took:.1f}s after map_index {stopped} was marked failed"
        )
        assert run["state"] == "failed"
        expected = {i: "failed" if i in (stopped, ARRAY_FAILING_INDEX) else "success" for i in range(ARRAY_TASKS)}
        assert {i: ti["state"] for i, ti in tis.items()} == expected
        assert tis[ARRAY_FAILING_INDEX]["try_number"] == 2
        # One job per instance and one for the retry of map_index 7: never the whole array again.
        assert len(jobs) == ARRAY_TASKS + 1, [(job.job_id, job.state) for job in jobs]
        assert submissions <= math.ceil(ARRAY_TASKS / MAX_ARRAY_SIZE) + 2 + 1
        assert sorted(job.state for job in jobs) == sorted(
            ["COMPLETED"] * (ARRAY_TASKS - 2) + ["FAILED", "FAILED", "CANCELLED"]
        )

        for index in range(ARRAY_TASKS):
            tries = (1, 2) if index == ARRAY_FAILING_INDEX else (1,)
            for try_number in tries:
                log = stack.task_log(dag_id, run_id, "mapped", try_number, map_index=index)
                assert element_of(log, index), f"map_index {index} try {try_number}: no submission line"
                missing, repeated = line_report(numbered(log, f"el{index}"), ARRAY_LINES)
                assert (missing, repeated) == ([], []), f"map_index {index} try {try_number}"
                others = [line for line in log if (m := OUTPUT.match(line)) and int(m.group(1)) != index]
                assert others == [], f"map_index {index} holds another element's output: {others[:3]}"
            if expected[index] == "success":  # each instance pushes its own element's id
                assert pushed_job_id(stack, dag_id, run_id, index) == element_of(log, index)
        retry_log = stack.task_log(dag_id, run_id, "mapped", 2, map_index=ARRAY_FAILING_INDEX)
        assert any("ended FAILED (exit 3:0)" in line for line in retry_log), retry_log[-10:]
    finally:
        cancel_jobs_named(job_prefix(run_id))


def test_a_triggerer_killed_while_mapped_elements_stream_loses_and_duplicates_nothing(
    one_triggerer: AirflowStack,
) -> None:
    stack = one_triggerer
    dag_id = "dep_arrays_restart"
    before = sdiag_submissions()
    run_id = stack.trigger(dag_id)
    try:
        stack.wait(
            lambda: len(numbered(log_of(stack, dag_id, run_id, 0), "arr0")) >= 5,
            240,
            "the first element to stream",
        )
        victim = next(t for t in stack.triggerers if t.alive())
        stack.kill(victim, signal.SIGKILL)
        time.sleep(3)
        stack.start_triggerer()
        run = stack.wait_for_run_end(dag_id, run_id, 600)

        submissions = sdiag_submissions() - before
        jobs = jobs_named(job_prefix(run_id))
        print(
            f"\n{dag_id}: triggerer SIGKILLed mid-array; {submissions} sbatch calls (sdiag), "
            f"{len(jobs)} jobs for {ARRAY_RESTART_TASKS} instances"
        )
        assert run["state"] == "success"
        assert len(jobs) == ARRAY_RESTART_TASKS and {job.state for job in jobs} == {"COMPLETED"}
        assert submissions <= math.ceil(ARRAY_RESTART_TASKS / MAX_ARRAY_SIZE) + 2
        for index in range(ARRAY_RESTART_TASKS):
            # Every line at least once; a repeat only inside a span the log announces as replayed
            # (what the killed triggerer had handed over but not yet confirmed written).
            log = stack.task_log(dag_id, run_id, "mapped", 1, map_index=index)
            check_delivery(log, f"arr{index}", ARRAY_RESTART_LINES, f"map_index {index}")
    finally:
        cancel_jobs_named(job_prefix(run_id))


def test_the_arrays_example_maps_over_fifty_inputs_in_a_few_submissions_each_sample_in_its_own_log(
    one_triggerer: AirflowStack,
) -> None:
    stack = one_triggerer
    dag_id = "slurm_array_map"
    before = sdiag_submissions()
    run_id = stack.trigger(dag_id)
    run = stack.wait_for_run_end(dag_id, run_id, 900)

    submissions = sdiag_submissions() - before
    tis = stack.task_instances(dag_id, run_id)
    print(f"\n{dag_id}: {len(tis)} mapped instances, {submissions} sbatch calls (sdiag), MaxArraySize {MAX_ARRAY_SIZE}")
    assert run["state"] == "success" and len(tis) == 50
    assert submissions <= math.ceil(50 / MAX_ARRAY_SIZE) + 2
    for index in range(50):
        log = log_of(stack, dag_id, run_id, index, task_id="process")
        sample = f"sample_{index:02d}"
        ours = [line for line in log if line.startswith("sample_")]
        assert ours == [f"{sample}: step {step} of 3" for step in (1, 2, 3)] + [f"{sample}: done"], index
        assert element_of(log, index) == pushed_job_id(stack, dag_id, run_id, index, task_id="process")
