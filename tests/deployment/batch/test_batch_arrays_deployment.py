"""Mapped BatchRevisionOperator tasks as AWS Batch array jobs on a real Airflow deployment (docs/arrays.rst).

What only the real stack shows: mapped instances deferring from their workers and meeting in the
triggerer, a triggerer SIGKILLed while their children run (its successor must adopt, never
resubmit), a user marking one instance failed, Airflow retrying one instance. The children are
held RUNNING in moto; the test writes their CloudWatch lines and ends them. SubmitJob calls are
counted by moto (the jobs it made), not by the client. The connection caps arrays at 6 children.
"""

from __future__ import annotations

import math
import re
import time
import urllib.parse

import pytest

from tests.deployment.batch.conftest import BatchStack
from tests.deployment.batch.test_batch_deployment import kill_and_restart
from tests.deployment.dags.scenario_common import (
    BATCH_ARRAY_FAILING_INDEX,
    BATCH_ARRAY_STOPPED_INDEX,
    BATCH_ARRAY_TASKS,
    BATCH_MAX_ARRAY_SIZE,
)
from tests.deployment.stack import AirflowStack, StackError
from tests.integration.batch.moto_batch import HeldJobs

pytestmark = [pytest.mark.deployment, pytest.mark.cluster, pytest.mark.slow]  # the shared stack brings the cluster up

DAG_ID = "dep_batch_arrays"
SUBMITTED = re.compile(
    r"Submitted as AWS Batch array job ([0-9a-f-]+:\d+) \(array [0-9a-f-]+, index \d+ of chunk \d+/\d+, "
    r"map_index (\d+)\)"
)
OUTPUT = re.compile(r"^child of map_index (\d+) says ")


def log_of(stack: AirflowStack, run_id: str, map_index: int, try_number: int = 1) -> list[str]:
    """The instance's task log; empty while Airflow has not made the instance yet."""
    try:
        return [line.strip() for line in stack.task_log(DAG_ID, run_id, "mapped", try_number, map_index=map_index)]
    except StackError:
        return []


def child_of(log: list[str], map_index: int) -> str | None:
    for line in log:
        match = SUBMITTED.search(line)
        if match and int(match.group(2)) == map_index:
            return match.group(1)
    return None


def pushed_job_id(stack: AirflowStack, run_id: str, map_index: int) -> str:
    entry = stack.get(
        f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/mapped"
        "/xcomEntries/batch_job_id",
        map_index=map_index,
    )
    return str(entry["value"]).strip('"')


def say(batch: BatchStack, child: str, map_index: int, what: str) -> None:
    stream = str(HeldJobs.job(child).log_stream_name)
    batch.aws.put_lines(stream, [(int(time.time() * 1000), f"child of map_index {map_index} says {what}")])


def test_mapped_batch_tasks_are_two_array_jobs_each_instance_with_its_own_child_through_a_triggerer_kill(
    batch_stack: BatchStack,
) -> None:
    stack, queue = batch_stack.stack, batch_stack.queue
    before = {job.job_id for job in HeldJobs.submitted(queue)}
    run_id = stack.trigger(DAG_ID)
    children: dict[int, str] = {}
    try:
        children = stack.wait(
            lambda: (
                len(found := {m: c for m in range(BATCH_ARRAY_TASKS) if (c := child_of(log_of(stack, run_id, m), m))})
                == BATCH_ARRAY_TASKS
                and found
            ),
            300,
            "every instance to be submitted as a child",
        )
        arrays = [job for job in HeldJobs.submitted(queue) if job.job_id not in before]
        assert len(arrays) == math.ceil(BATCH_ARRAY_TASKS / BATCH_MAX_ARRAY_SIZE)
        assert sorted(children.values()) == sorted(child.job_id for job in arrays for child in job._child_jobs or [])
        for m, child in children.items():
            say(batch_stack, child, m, "hello")
        stack.wait(
            lambda: all(f"child of map_index {m} says hello" in log_of(stack, run_id, m) for m in children),
            120,
            "every instance to stream its child's first line",
        )

        took = kill_and_restart(stack)
        print(f"\n{DAG_ID}: triggerer SIGKILLed with {len(children)} children running; restarted in {took:.1f}s")
        for m, child in children.items():
            say(batch_stack, child, m, "after the restart")
        stack.wait(
            lambda: all(f"child of map_index {m} says after the restart" in log_of(stack, run_id, m) for m in children),
            240,
            "the new triggerer to adopt and stream every child",
        )
        stopped = children[BATCH_ARRAY_STOPPED_INDEX]
        stack.set_task_state(DAG_ID, run_id, "mapped", "failed", map_index=BATCH_ARRAY_STOPPED_INDEX)
        stack.wait(lambda: stopped in batch_stack.aws.held.terminated, 60, f"child {stopped} to be terminated")
        assert [child for child in children.values() if child in batch_stack.aws.held.terminated] == [stopped]

        for m, child in children.items():
            if m != BATCH_ARRAY_STOPPED_INDEX:
                failing = m == BATCH_ARRAY_FAILING_INDEX
                batch_stack.aws.held.finish(child, success=not failing, exit_code=3 if failing else 0)
        retry = stack.wait(
            lambda: [job for job in HeldJobs.submitted(queue) if job.job_id not in before and job not in arrays],
            120,
            f"the retry of map_index {BATCH_ARRAY_FAILING_INDEX} to be submitted",
        )
        assert len(retry) == 1 and "size" not in (retry[0].array_properties or {})  # one job, never the array
        batch_stack.aws.held.finish(retry[0].job_id, success=True, exit_code=0)
        run = stack.wait_for_run_end(DAG_ID, run_id, 300)

        submitted = [job for job in HeldJobs.submitted(queue) if job.job_id not in before]
        print(f"{DAG_ID}: {BATCH_ARRAY_TASKS} mapped instances (+1 retry): {len(submitted)} SubmitJob calls (moto)")
        assert len(submitted) == len(arrays) + 1
        tis = {ti["map_index"]: ti for ti in stack.task_instances(DAG_ID, run_id)}
        expected = {m: "failed" if m == BATCH_ARRAY_STOPPED_INDEX else "success" for m in range(BATCH_ARRAY_TASKS)}
        assert run["state"] == "failed"
        assert {m: ti["state"] for m, ti in tis.items()} == expected
        assert tis[BATCH_ARRAY_FAILING_INDEX]["try_number"] == 2
        for m in range(BATCH_ARRAY_TASKS):
            log = log_of(stack, run_id, m)
            others = [line for line in log if (match := OUTPUT.match(line)) and int(match.group(1)) != m]
            assert others == [], f"map_index {m} holds another child's output: {others[:3]}"
            assert any(line.startswith(f"Adopted AWS Batch job {children[m]}") for line in log), log[-15:]
            if m != BATCH_ARRAY_STOPPED_INDEX and m != BATCH_ARRAY_FAILING_INDEX:
                assert pushed_job_id(stack, run_id, m) == children[m]
        failed_try = log_of(stack, run_id, BATCH_ARRAY_FAILING_INDEX)
        assert any(f"AWS Batch job {children[BATCH_ARRAY_FAILING_INDEX]} ended FAILED" in line for line in failed_try)
        assert pushed_job_id(stack, run_id, BATCH_ARRAY_FAILING_INDEX) == retry[0].job_id
    finally:
        for job in HeldJobs.submitted(queue):
            for child in [job, *(job._child_jobs or [])]:
                if job.job_id not in before and child.status in ("RUNNING", "PENDING"):
                    batch_stack.aws.held.finish(child.job_id, success=False, exit_code=1)
