"""A job whose worker died is adopted by the retry, live or ended; a job a trigger watched never is.

Each test plays the tries of one task instance the way Airflow runs them: ``execute`` on a worker
(which submits or adopts, then defers), the trigger in the triggerer, ``execute_complete`` back on a
worker. "The worker died after submitting" is a try whose ``execute`` submitted and deferred but
whose trigger never ran.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_hpc_provider.dialects import batch
from airflow_hpc_provider.errors import JobFailedError
from airflow_hpc_provider.operators.batch import BatchRevisionOperator
from airflow_hpc_provider.triggers.batch import CANCEL_REASON, BatchJobTrigger
from airflow_hpc_provider.watching.batch_logs import MemoryPositionStore
from tests.integration.batch.conftest import CONN_ID
from tests.integration.batch.moto_batch import HeldJobs, MotoAws
from tests.integration.batch.test_batch_definitions import FakeTI

pytestmark = pytest.mark.asyncio
TASK_LOG = logging.getLogger("test.batch.adoption.task_log")
TASK_LOG.setLevel(logging.INFO)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@pytest.fixture
def task_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lines]:
    """What the operator and its trigger log: the task log of every try."""
    monkeypatch.setattr(BatchRevisionOperator, "log", TASK_LOG)
    handler = Lines()
    TASK_LOG.addHandler(handler)
    yield handler
    TASK_LOG.removeHandler(handler)


class TaskInstance:
    """One task instance across its tries."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.run_id = uuid.uuid4().hex
        self.task_id = f"adopt-{uuid.uuid4().hex[:6]}"

    def operator(self) -> BatchRevisionOperator:
        return BatchRevisionOperator(
            task_id=self.task_id,
            command="echo work",
            image="repo/adopt:1",
            job_queue=self.queue,
            aws_conn_id=CONN_ID,
            poll_interval=0.5,
        )

    def ti(self, try_number: int) -> FakeTI:
        return FakeTI(self.task_id, try_number=try_number, run_id=self.run_id)

    async def start(self, try_number: int) -> tuple[BatchRevisionOperator, BatchJobTrigger]:
        """``execute`` on a worker: submits or adopts, then defers."""
        op = self.operator()
        with pytest.raises(TaskDeferred) as deferred:
            await asyncio.to_thread(op.execute, {"ti": self.ti(try_number)})  # type: ignore[arg-type]
        trigger = deferred.value.trigger
        assert isinstance(trigger, BatchJobTrigger)
        trigger._log = TASK_LOG
        store = MemoryPositionStore()  # the try's own XCom
        trigger.position_store = lambda: store  # type: ignore[method-assign]
        return op, trigger

    async def complete(self, op: BatchRevisionOperator, trigger: BatchJobTrigger, try_number: int) -> Any:
        """The trigger to its event, then ``execute_complete`` on a worker."""
        events = [event async for event in trigger.run()]
        assert len(events) == 1
        return await asyncio.to_thread(op.execute_complete, {"ti": self.ti(try_number)}, events[0])  # type: ignore[arg-type]

    def jobs(self, aws: MotoAws) -> list[str]:
        listed = aws.client("batch").list_jobs(
            jobQueue=self.queue, filters=[{"name": "JOB_NAME", "values": [f"batch_tests-{self.task_id}-*"]}]
        )
        return sorted(job["jobId"] for job in listed["jobSummaryList"])


def put_output(aws: MotoAws, job_id: str, *lines: str) -> None:
    now = int(time.time() * 1000)
    aws.put_lines(str(HeldJobs.job(job_id).log_stream_name), [(now + i, line) for i, line in enumerate(lines)])


async def test_a_job_that_succeeded_while_its_worker_was_dead_is_adopted_and_decides_the_retry(
    aws: MotoAws, held_queue: str, task_log: Lines
) -> None:
    task = TaskInstance(held_queue)
    _, never_run = await task.start(1)  # the worker died right after submitting: no trigger ran
    job_id = never_run.job_id
    put_output(aws, job_id, "first output line", "last output line")
    aws.held.finish(job_id, success=True, exit_code=0)
    op, trigger = await task.start(2)
    assert trigger.job_id == job_id
    assert task_log.having(f"Adopted AWS Batch job {job_id}") and task_log.having("ended SUCCEEDED")
    assert await task.complete(op, trigger, 2) == job_id
    assert task_log.lines.count("first output line") == 1 and task_log.lines.count("last output line") == 1
    assert task.jobs(aws) == [job_id]  # nothing was submitted again


async def test_an_adopted_failure_fails_the_retry_and_the_next_retry_submits_afresh(
    aws: MotoAws, held_queue: str, task_log: Lines
) -> None:
    task = TaskInstance(held_queue)
    _, never_run = await task.start(1)
    failed = never_run.job_id
    put_output(aws, failed, "about to fail")
    aws.held.finish(failed, success=False, exit_code=3, reason="Essential container in task exited")
    op, trigger = await task.start(2)
    assert trigger.job_id == failed
    with pytest.raises(JobFailedError, match=rf"AWS Batch job {failed} ended FAILED \(exit 3\)"):
        await task.complete(op, trigger, 2)
    assert task_log.lines.count("about to fail") == 1
    # Try 2 took that outcome: try 3 runs the work again instead of failing with the same job.
    op, trigger = await task.start(3)
    assert trigger.job_id != failed
    assert sorted(task.jobs(aws)) == sorted([failed, trigger.job_id])
    aws.held.finish(trigger.job_id, success=True, exit_code=0)
    assert await task.complete(op, trigger, 3) == trigger.job_id


async def test_a_cleared_task_submits_afresh_even_before_its_old_job_is_terminated(
    aws: MotoAws, held_queue: str, task_log: Lines
) -> None:
    task = TaskInstance(held_queue)
    _, trigger = await task.start(1)
    watched = trigger.job_id
    running = asyncio.create_task(task.complete(task.operator(), trigger, 1))
    deadline = time.monotonic() + 20
    tags = aws.client("batch").list_tags_for_resource
    while batch.CLAIM_TAG not in tags(resourceArn=HeldJobs.job(watched).arn)["tags"]:
        assert time.monotonic() < deadline, "the trigger never marked the job it watches"
        await asyncio.sleep(0.1)
    # A clear: Airflow cancels the trigger, queues try 2 at once, and calls on_kill meanwhile.
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    _, second = await task.start(2)  # the old job is still RUNNING here
    assert second.job_id != watched
    await trigger.on_kill()
    assert aws.held.terminated[watched] == CANCEL_REASON
    _, third = await task.start(3)  # and once it is terminated, it is not adopted either
    assert third.job_id == second.job_id
    assert sorted(task.jobs(aws)) == sorted([watched, second.job_id])


async def test_a_job_watched_on_the_worker_to_its_end_is_not_adopted_by_the_next_try(
    aws: MotoAws, queue: str, task_log: Lines
) -> None:
    task = TaskInstance(queue)  # moto ends these jobs at once
    op = task.operator()
    op.deferrable = False
    first = await asyncio.to_thread(op.execute, {"ti": task.ti(1)})  # type: ignore[arg-type]
    op = task.operator()
    op.deferrable = False
    second = await asyncio.to_thread(op.execute, {"ti": task.ti(2)})  # type: ignore[arg-type]
    assert second != first and sorted(task.jobs(aws)) == sorted([first, second])
