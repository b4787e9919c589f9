"""The Batch poller and trigger against moto: batching, log streaming across a restart, cancel, timeout."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from moto.batch.responses import BatchResponse
from moto.core.exceptions import JsonRESTError

from airflow_hpc_provider.dialects import batch
from airflow_hpc_provider.hooks.batch import BatchHook
from airflow_hpc_provider.jobs import JobKey, JobState
from airflow_hpc_provider.operators.batch import TIMEOUT_REASON, BatchRevisionOperator
from airflow_hpc_provider.triggers.batch import CANCEL_REASON, BatchJobTrigger
from airflow_hpc_provider.watching import batch as batch_poller
from airflow_hpc_provider.watching.batch import BatchPoller, BatchPollerSettings, BatchTarget
from airflow_hpc_provider.watching.batch_logs import MemoryPositionStore
from tests.integration.batch.conftest import CONN_ID
from tests.integration.batch.moto_batch import HeldJobs, MotoAws
from tests.integration.batch.test_batch_definitions import FakeTI

pytestmark = pytest.mark.asyncio


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    async def wait_for(self, pattern: str, timeout_s: float = 20) -> None:
        async with asyncio.timeout(timeout_s):
            while not any(re.search(pattern, line) for line in self.lines):
                await asyncio.sleep(0.05)


def collected(trigger: BatchJobTrigger) -> Lines:
    handler = Lines()
    logger = logging.getLogger(f"test.batch.{uuid.uuid4().hex}")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False
    trigger._log = logger
    return handler


@functools.cache
def _definition(endpoint: str) -> tuple[BatchHook, str]:
    """One hook and one definition per moto server: building a hook per job is slow."""
    hook = BatchHook(CONN_ID)
    assert hook.client().meta.endpoint_url == endpoint
    name, body = batch.auto_body(
        "repo/watch:1", job_role_arn=None, execution_role_arn=None, log_group=None, platform="EC2"
    )
    return hook, hook.ensure_definition(name, body).arn


def submit(queue: str, array_size: int | None = None) -> str:
    hook, definition = _definition(BatchHook(CONN_ID).conn_config.endpoint_url or "")
    key = JobKey.for_task_instance("watch", "t", uuid.uuid4().hex, -1, 1)
    request: dict[str, Any] = {
        "jobName": f"w-{key.task_digest}",
        "jobQueue": queue,
        "jobDefinition": definition,
        "tags": {batch.KEY_TAG: key.tag},
    }
    if array_size:
        request["arrayProperties"] = {"size": array_size}
    return hook.submit(request)


def stream_of(job_id: str) -> str:
    return str(HeldJobs.job(job_id).log_stream_name)


def trigger_for(job_id: str, store: MemoryPositionStore, **kwargs: Any) -> BatchJobTrigger:
    trigger = BatchJobTrigger(job_id=job_id, aws_conn_id=CONN_ID, poll_interval=1, **kwargs)
    trigger.position_store = lambda: store  # type: ignore[method-assign]  # stands in for the task's XCom
    return trigger


async def first_event(trigger: BatchJobTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("no event")


async def test_log_lines_stream_once_each_across_a_triggerer_restart(aws: MotoAws, held_queue: str) -> None:
    job_id = submit(held_queue)
    stream = stream_of(job_id)
    now = int(time.time() * 1000)
    aws.put_lines(stream, [(now, "line 1"), (now + 1, "line 2"), (now + 2, "line 3a")])
    store = MemoryPositionStore()
    first = trigger_for(job_id, store)
    lines = collected(first)
    task = asyncio.create_task(first_event(first))
    await lines.wait_for("line 3a")
    await asyncio.sleep(0.3)  # the position is saved right after the lines are logged
    # A triggerer restart: the run task is cancelled (no on_kill), the trigger rebuilt from its kwargs.
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert HeldJobs.job(job_id).status == "RUNNING" and job_id not in aws.held.terminated
    # Written while no triggerer ran, one of them at the very millisecond of the last line seen.
    aws.put_lines(stream, [(now + 2, "line 3b"), (now + 3, "line 4")])
    _, kwargs = first.serialize()
    second = BatchJobTrigger(**kwargs)
    second.position_store = lambda: store  # type: ignore[method-assign]
    more = collected(second)
    task = asyncio.create_task(first_event(second))
    await more.wait_for("line 4")
    aws.put_lines(stream, [(now + 5, "line 5")])
    await more.wait_for("line 5")
    aws.held.finish(job_id, success=True, exit_code=0)
    payload = await asyncio.wait_for(task, 20)
    assert payload["kind"] == "ended" and payload["status"]["state"] == "COMPLETED"
    logged = [line for line in lines.lines + more.lines if line.startswith("line ")]
    assert logged == ["line 1", "line 2", "line 3a", "line 3b", "line 4", "line 5"]
    assert not batch_poller._shared


async def test_logs_of_every_attempt_and_of_array_children_on_request(aws: MotoAws, held_queue: str) -> None:
    job_id = submit(held_queue, array_size=2)
    job = HeldJobs.job(job_id)
    children = job._child_jobs or []
    assert len(children) == 2
    now = int(time.time() * 1000)
    for index, child in enumerate(children):
        aws.put_lines(str(child.log_stream_name), [(now + index, f"child says {index}")])
    trigger = trigger_for(job_id, MemoryPositionStore(), include_children=True)
    lines = collected(trigger)
    task = asyncio.create_task(first_event(trigger))
    await lines.wait_for(r"\[child 1\] child says 1")
    for child in children:
        aws.held.finish(child.job_id, success=True, exit_code=0)
    aws.held.finish(job_id, success=True, exit_code=0)
    payload = await asyncio.wait_for(task, 20)
    assert payload["status"]["state"] == "COMPLETED"
    assert "[child 0] child says 0" in lines.lines


async def test_marking_the_task_failed_terminates_the_job_and_a_restart_does_not(aws: MotoAws, held_queue: str) -> None:
    job_id = submit(held_queue)
    trigger = trigger_for(job_id, MemoryPositionStore())
    lines = collected(trigger)
    task = asyncio.create_task(first_event(trigger))
    await lines.wait_for(f"job {job_id}: RUNNING")
    task.cancel()  # what TriggerRunner does first, on a restart and on a user action alike
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job_id not in aws.held.terminated
    await trigger.on_kill()  # only a user action gets here
    assert aws.held.terminated[job_id] == CANCEL_REASON
    assert HeldJobs.job(job_id).status == "FAILED"


async def test_a_task_past_its_deadline_fires_timeout_and_the_operator_terminates_the_job(
    aws: MotoAws, held_queue: str
) -> None:
    job_id = submit(held_queue)
    trigger = trigger_for(job_id, MemoryPositionStore(), deadline=time.time() + 2)
    payload = await asyncio.wait_for(first_event(trigger), 20)
    assert payload["kind"] == "timeout" and payload["owned"] is True
    assert job_id not in aws.held.terminated
    op = BatchRevisionOperator(task_id="timeout", command="sleep 1000", image="x:1", aws_conn_id=CONN_ID)
    from airflow.sdk.exceptions import AirflowTaskTimeout

    with pytest.raises(AirflowTaskTimeout, match=f"AWS Batch job {job_id} was terminated"):
        await asyncio.to_thread(op.execute_complete, {"ti": FakeTI("timeout")}, payload)  # type: ignore[arg-type]
    assert aws.held.terminated[job_id] == TIMEOUT_REASON


async def test_a_failed_job_fails_the_task_with_its_reason_and_exit_code(aws: MotoAws, held_queue: str) -> None:
    job_id = submit(held_queue)
    trigger = trigger_for(job_id, MemoryPositionStore())
    task = asyncio.create_task(first_event(trigger))
    await asyncio.sleep(1.5)
    aws.held.finish(job_id, success=False, exit_code=3, reason="Essential container in task exited")
    payload = await asyncio.wait_for(task, 20)
    assert payload["status"]["state"] == "FAILED" and payload["status"]["exit_code"] == 3
    op = BatchRevisionOperator(task_id="f", command="false", image="x:1", aws_conn_id=CONN_ID)
    from airflow_hpc_provider.errors import JobFailedError

    with pytest.raises(JobFailedError, match=rf"AWS Batch job {job_id} ended FAILED \(exit 3\).*Essential container"):
        await asyncio.to_thread(op.execute_complete, {"ti": FakeTI("f")}, payload)  # type: ignore[arg-type]


async def test_a_retry_adopts_the_job_of_a_try_whose_worker_died_and_not_that_of_a_try_that_ended(
    aws: MotoAws, held_queue: str
) -> None:
    run_id = uuid.uuid4().hex

    def execute(try_number: int, *, worker_dies: bool = False) -> str:
        op = BatchRevisionOperator(
            task_id="adopt",
            command="sleep 100",
            image="repo/adopt:1",
            job_queue=held_queue,
            aws_conn_id=CONN_ID,
            wait_for_completion=False,
        )
        ti = FakeTI("adopt", try_number=try_number, run_id=run_id)
        if worker_dies:  # the worker is killed right after SubmitJob: the rest of execute never runs
            return op._submit(BatchHook(CONN_ID), {"ti": ti})  # type: ignore[arg-type]
        return op.execute({"ti": ti})  # type: ignore[arg-type]

    first = await asyncio.to_thread(execute, 1, worker_dies=True)
    second = await asyncio.to_thread(execute, 2)  # the job still runs: adopted
    assert second == first
    third = await asyncio.to_thread(execute, 3)  # try 2 took its outcome (submitted): a new job
    assert third != first
    listed = aws.client("batch").list_jobs(
        jobQueue=held_queue, filters=[{"name": "JOB_NAME", "values": ["batch_tests-adopt-*"]}]
    )
    assert sorted(j["jobId"] for j in listed["jobSummaryList"]) == sorted([first, third])


async def test_many_jobs_cost_one_describejobs_per_hundred_per_poll(aws: MotoAws, held_queue: str) -> None:
    ids = [submit(held_queue) for _ in range(250)]
    poller = BatchPoller(BatchTarget(CONN_ID), BatchPollerSettings(interval_s=60))
    streams = [poller.watch(job_id) for job_id in ids]
    firsts = await asyncio.gather(*(anext(s) for s in streams))
    assert {type(e).__name__ for e in firsts} == {"StatusChanged"}
    before = poller.describe_calls
    await poller.poll_once()
    assert poller.describe_calls - before == 3
    for s in streams:
        await s.aclose()
    await poller.close()


async def test_claims_of_many_new_jobs_are_spread_over_polls_and_ended_jobs_go_first(
    aws: MotoAws, held_queue: str
) -> None:
    ids = [submit(held_queue) for _ in range(120)]
    aws.held.finish(ids[-1], success=True, exit_code=0)  # ended before any trigger saw it
    poller = BatchPoller(BatchTarget(CONN_ID), BatchPollerSettings(interval_s=60, claims_per_poll=50))
    streams = [poller.watch(job_id, claim="trigger") for job_id in ids]
    await asyncio.gather(*(anext(s) for s in streams))  # the first poll is under way
    async with asyncio.timeout(20):
        while poller.claim_calls < 50:
            await asyncio.sleep(0.05)
    await asyncio.sleep(1)  # and over: the next poll is a minute away

    def claimed() -> set[str]:
        tags = aws.client("batch").list_tags_for_resource
        return {job_id for job_id in ids if batch.CLAIM_TAG in tags(resourceArn=HeldJobs.job(job_id).arn)["tags"]}

    assert poller.claim_calls == 50 and ids[-1] in claimed()
    await poller.poll_once()
    await poller.poll_once()
    assert claimed() == set(ids) and poller.claim_calls == 120
    await poller.poll_once()
    assert poller.claim_calls == 120  # DescribeJobs shows the tags: nothing claimed twice
    for s in streams:
        await s.aclose()
    await poller.close()


async def test_a_job_unknown_to_describejobs_is_lost_never_a_success(aws: MotoAws) -> None:
    poller = BatchPoller(BatchTarget(CONN_ID), BatchPollerSettings(interval_s=1, missing_grace_s=2))
    events = poller.watch("no-such-job")
    async with asyncio.timeout(20):
        async for event in events:
            if type(event).__name__ == "JobEnded":
                break
    assert event.status.state is JobState.LOST and not event.status.state.is_success  # type: ignore[union-attr]
    assert event.status.exit_code is None  # type: ignore[union-attr]
    await poller.close()


@pytest.fixture
def throttled_describejobs() -> Iterator[list[int]]:
    """Server side: DescribeJobs answers ThrottlingException for its next calls."""
    original = BatchResponse.describejobs
    remaining = [12]

    def describejobs(self: BatchResponse) -> str:
        if remaining[0] > 0:
            remaining[0] -= 1
            raise JsonRESTError("ThrottlingException", "Rate exceeded")
        return original(self)

    BatchResponse.describejobs = describejobs  # type: ignore[method-assign]
    yield remaining
    BatchResponse.describejobs = original  # type: ignore[method-assign]


async def test_throttling_backs_off_and_tells_the_task_instead_of_failing_it(
    aws: MotoAws, queue: str, throttled_describejobs: list[int]
) -> None:
    job_id = submit(queue)  # moto finishes it at once; the answer is only held back by throttling
    trigger = trigger_for(job_id, MemoryPositionStore())
    trigger.poll_interval = 0.2
    lines = collected(trigger)
    payload = await asyncio.wait_for(first_event(trigger), 60)
    assert payload["kind"] == "ended" and payload["status"]["state"] == "COMPLETED"
    assert throttled_describejobs[0] == 0
    assert any("throttled" in line for line in lines.lines)
    assert any("work again" in line for line in lines.lines)
