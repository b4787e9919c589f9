"""Mapped Batch task instances as children of array jobs, driven as the triggerer drives their triggers.

Many BatchArrayElementTriggers run on one event loop, as a triggerer runs the triggers of a mapped
task's instances, against moto in server mode: they must reach Batch as a handful of SubmitJob
calls (counted by moto, the server), each instance keeping its own child, CloudWatch output,
outcome, retry and stop, and a restarted event loop must adopt what was submitted, never submit
it again. The connection caps arrays at 6 children (``max_array_size``), so twenty instances need
four arrays.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import re
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_hpc_provider.dialects import batch, batch_array
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.hooks.batch import BatchHook
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.operators.batch import BatchRevisionOperator
from airflow_hpc_provider.triggers.batch import CANCEL_REASON
from airflow_hpc_provider.triggers.batch_array import BatchArrayElementTrigger
from airflow_hpc_provider.watching.arrays import ElementRequest, env_items
from airflow_hpc_provider.watching.batch_arrays import BatchArrayGroup, request_to_dict
from tests.integration.array_elements import NASTY, first_event, in_a_new_triggerer, numbered_lines
from tests.integration.batch.moto_batch import HeldJobs, MotoAws
from tests.integration.batch.test_batch_definitions import FakeTI
from tests.integration.batch.test_batch_watching import collected

pytestmark = pytest.mark.asyncio

ARRAYS_CONN_ID = "aws_moto_arrays"
MAX_ARRAY_SIZE = 6
LINES = 100
CHILD = re.compile(r"^[0-9a-f-]{36}:(\d+)$")


@pytest.fixture
def arrays_conn(moto_aws: MotoAws, aws: MotoAws, monkeypatch: pytest.MonkeyPatch) -> str:
    """An aws connection to moto whose arrays hold at most 6 children."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{ARRAYS_CONN_ID.upper()}", moto_aws.connection_uri(max_array_size=MAX_ARRAY_SIZE))
    return ARRAYS_CONN_ID


@functools.cache
def _definition(endpoint: str) -> str:
    hook = BatchHook(ARRAYS_CONN_ID)
    assert hook.client().meta.endpoint_url == endpoint
    name, body = batch.auto_body(
        "repo/arrays:1", job_role_arn=None, execution_role_arn=None, log_group=None, platform="EC2"
    )
    return hook.ensure_definition(name, body).arn


def element_triggers(
    aws: MotoAws,
    conn_id: str,
    queue: str,
    commands: Sequence[str],
    *,
    run_id: str,
    try_number: int = 1,
    map_indexes: Sequence[int] | None = None,
    env: dict[str, str] | None = None,
    window_s: float = 2.0,
) -> list[BatchArrayElementTrigger]:
    """The triggers the mapped task's instances defer to, built as the operator builds them."""
    group = BatchArrayGroup(
        conn_id=conn_id,
        region_name=None,
        base="arrays-mapped",
        run_id=run_id,
        queue=queue,
        definition_arn=_definition(aws.url),
        head=batch_array.head_script(),
        vcpus=1,
        memory_mb=512,
        window_s=window_s,
    )
    indexes = list(map_indexes if map_indexes is not None else range(len(commands)))
    triggers = []
    for map_index, command in zip(indexes, commands, strict=True):
        request = ElementRequest(
            group=group,
            key=JobKey.for_task_instance("batch_array_tests", "mapped", run_id, map_index, try_number),
            command=command,
            map_index=map_index,
            env=env_items({"ELEMENT": f"element {map_index}", **(env or {})}),
            siblings=f"batch_array_tests/{run_id}/mapped",
            expected=len(indexes),
        )
        triggers.append(
            BatchArrayElementTrigger(element=request_to_dict(request), aws_conn_id=conn_id, poll_interval=1)
        )
    return triggers


async def test_twenty_mapped_instances_are_four_submitjobs_each_child_with_its_own_log_state_exit_and_retry(
    aws: MotoAws, arrays_conn: str
) -> None:
    queue = aws.make_queue(f"arrays-{uuid.uuid4().hex[:8]}", runs_containers=True)
    run_id = uuid.uuid4().hex
    commands = [
        f'for i in $(seq 1 {LINES}); do echo "el{m} line $i"; done; printf "%s\\n" "$NASTY"; '
        'echo "own: $ELEMENT, carriers left: $(env | grep -c "^_AHE_")"; ' + ("exit 3" if m == 7 else "true")
        for m in range(20)
    ]
    triggers = element_triggers(aws, arrays_conn, queue, commands, run_id=run_id, env={"NASTY": NASTY})
    logs = [collected(trigger) for trigger in triggers]

    payloads = await asyncio.wait_for(asyncio.gather(*(first_event(t) for t in triggers)), timeout=120)

    submitted = HeldJobs.submitted(queue)
    print(f"\n20 mapped instances, max_array_size {MAX_ARRAY_SIZE}: {len(submitted)} SubmitJob calls (moto)")
    assert len(submitted) == math.ceil(20 / MAX_ARRAY_SIZE)
    assert sorted(len(job._child_jobs or []) for job in submitted) == [2, 6, 6, 6]
    job_ids = [payload["job_id"] for payload in payloads]
    assert all(CHILD.match(job_id) for job_id in job_ids), job_ids
    assert len(set(job_ids)) == 20
    for m, (payload, log) in enumerate(zip(payloads, logs, strict=True)):
        assert payload["kind"] == "ended" and payload["array_element"] is True
        expected_state, expected_exit = ("FAILED", 3) if m == 7 else ("COMPLETED", 0)
        assert (payload["status"]["state"], payload["status"]["exit_code"]) == (expected_state, expected_exit), m
        assert numbered_lines(log, f"el{m}") == [f"el{m} line {i}" for i in range(1, LINES + 1)]
        others = [line for line in log.lines if re.match(r"^el\d+ line ", line) and not line.startswith(f"el{m} ")]
        assert others == [], f"map_index {m} got another element's output: {others[:3]}"
        assert NASTY.split("\n") == [line for line in log.lines if line in NASTY.split("\n")]
        assert f"own: element {m}, carriers left: 0" in log.lines
        assert any(
            re.fullmatch(
                rf"Submitted as AWS Batch array job {payload['job_id']} \(array [0-9a-f-]+, index \d of chunk "
                rf"\d/\d, map_index {m}\) on {arrays_conn}",
                line,
            )
            for line in log.lines
        ), log.lines[:5]
    # No env value in any command Batch was given (DescribeJobs shows commands to anyone who may list jobs).
    assert all(NASTY not in json.dumps(job.container_overrides["command"]) for job in submitted)

    # map_index 7's retry (try 2) is exactly one new job, never the array again.
    (retry,) = element_triggers(aws, arrays_conn, queue, ["echo again"], run_id=run_id, try_number=2, map_indexes=[7])
    payload = await asyncio.wait_for(first_event(retry), timeout=60)

    assert len(HeldJobs.submitted(queue)) == len(submitted) + 1
    assert payload["status"]["state"] == "COMPLETED"
    assert ":" not in payload["job_id"] and payload["job_id"] != payloads[7]["job_id"]


async def test_a_user_stopping_one_instance_terminates_only_its_child(
    aws: MotoAws, arrays_conn: str, held_queue: str
) -> None:
    triggers = element_triggers(aws, arrays_conn, held_queue, ["sleep 100"] * 4, run_id=uuid.uuid4().hex)
    logs = [collected(trigger) for trigger in triggers]
    running = [asyncio.create_task(first_event(trigger)) for trigger in triggers]
    for log in logs:
        await log.wait_for(r"AWS Batch job [0-9a-f-]+:\d: RUNNING")

    running[2].cancel()  # the triggerer cancels the trigger, then calls on_kill (a user's action)
    with contextlib.suppress(asyncio.CancelledError):
        await running[2]
    await triggers[2].on_kill()

    stopped = triggers[2].job_id
    assert CHILD.match(stopped)
    assert aws.held.terminated.get(stopped) == CANCEL_REASON
    assert [job_id for job_id in aws.held.terminated if job_id.startswith(stopped.split(":")[0])] == [stopped]
    assert HeldJobs.job(stopped).status == "FAILED"
    for trigger in (triggers[0], triggers[1], triggers[3]):
        assert HeldJobs.job(trigger.job_id).status == "RUNNING"
        aws.held.finish(trigger.job_id, success=True, exit_code=0)
    payloads = await asyncio.wait_for(asyncio.gather(*running[:2], running[3]), timeout=30)
    assert [payload["status"]["state"] for payload in payloads] == ["COMPLETED"] * 3


async def test_a_restarted_triggerer_adopts_every_submitted_child_and_submits_nothing_again(
    aws: MotoAws, arrays_conn: str, held_queue: str
) -> None:
    triggers = element_triggers(aws, arrays_conn, held_queue, ["sleep 100"] * 8, run_id=uuid.uuid4().hex)
    stored = [json.dumps(trigger.serialize()[1]) for trigger in triggers]  # what the database keeps
    first_logs = [collected(trigger) for trigger in triggers]
    running = [asyncio.create_task(first_event(trigger)) for trigger in triggers]
    for log in first_logs:
        await log.wait_for(r"AWS Batch job [0-9a-f-]+:\d: RUNNING")
    for task in running:  # a restart: the tasks are cancelled, on_kill is not called
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    before = len(HeldJobs.submitted(held_queue))
    assert before == 2  # 8 children, at most 6 per array

    # The new triggerer rebuilds each trigger from what the database stored at deferral: no job id.
    reborn = [BatchArrayElementTrigger(**json.loads(kwargs)) for kwargs in stored]
    assert all(trigger.job_id == "" for trigger in reborn)
    second_logs = [collected(trigger) for trigger in reborn]
    new_loop = asyncio.create_task(asyncio.to_thread(asyncio.run, in_a_new_triggerer(reborn, timeout_s=60)))
    for log in second_logs:
        await log.wait_for(r"^Adopted AWS Batch job [0-9a-f-]+:\d on ", timeout_s=60)
    for trigger in triggers:
        aws.held.finish(trigger.job_id, success=True, exit_code=0)
    payloads = await new_loop

    assert len(HeldJobs.submitted(held_queue)) == before
    assert [payload["job_id"] for payload in payloads] == [trigger.job_id for trigger in triggers]
    assert [payload["status"]["state"] for payload in payloads] == ["COMPLETED"] * 8
    assert not aws.held.terminated.keys() & {trigger.job_id for trigger in triggers}


class MappedTI(FakeTI):
    """A mapped task instance as the operator reads it, with Airflow's count of its siblings."""

    def __init__(self, task_id: str, map_index: int, count: int, run_id: str) -> None:
        super().__init__(task_id, run_id=run_id)
        self.map_index, self.count, self.task = map_index, count, None

    def get_ti_count(self, **_: Any) -> int:
        return self.count


async def test_mapped_operator_instances_defer_to_element_triggers_and_complete_with_their_own_child(
    aws: MotoAws, arrays_conn: str, capfd: pytest.CaptureFixture[str]
) -> None:
    queue = aws.make_queue(f"mapped-{uuid.uuid4().hex[:8]}", runs_containers=True)
    run_id, secret = uuid.uuid4().hex, f"token-{uuid.uuid4().hex}"
    operators = [
        BatchRevisionOperator(
            task_id="mapped",
            aws_conn_id=arrays_conn,
            job_queue=queue,
            image="repo/arrays:1",
            command='echo "sample $SAMPLE token-length ${#TOKEN}"',
            env={"SAMPLE": f"s{m}", "TOKEN": secret},
            poll_interval=1,
            array_window=5,
        )
        for m in range(5)
    ]
    tis = [MappedTI("mapped", m, 5, run_id) for m in range(5)]
    triggers = []
    for op, ti in zip(operators, tis, strict=True):
        with pytest.raises(TaskDeferred) as deferred:
            await asyncio.to_thread(op.execute, {"ti": ti})  # type: ignore[arg-type]
        assert isinstance(deferred.value.trigger, BatchArrayElementTrigger)
        triggers.append(deferred.value.trigger)
    assert HeldJobs.submitted(queue) == []  # the workers submitted nothing

    logs = [collected(trigger) for trigger in triggers]
    payloads = await asyncio.wait_for(asyncio.gather(*(first_event(t) for t in triggers)), timeout=60)

    (array,) = HeldJobs.submitted(queue)
    assert len(array._child_jobs or []) == 5
    assert secret not in json.dumps(array.container_overrides["command"])
    for m, (op, ti, payload, log) in enumerate(zip(operators, tis, payloads, logs, strict=True)):
        assert f"sample s{m} token-length {len(secret)}" in log.lines
        assert await asyncio.to_thread(op.execute_complete, {"ti": ti}, payload) == payload["job_id"]  # type: ignore[arg-type]
        assert ti.xcoms["batch_job_id"] == payload["job_id"] == f"{array.job_id}:{m}"
    out, err = capfd.readouterr()
    assert "Deferring to the triggerer, which submits this task instance with the mapped siblings" in out + err
    assert secret not in out + err + "".join(line for log in logs for line in log.lines)


async def test_an_instance_too_large_for_any_array_request_is_no_element_and_alone_is_refused_before_submitjob(
    aws: MotoAws, arrays_conn: str, held_queue: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """Its env values pass what ECS starts a container with (8,192 characters of overrides) in an
    array or alone: its log says why it is not an element, and the job of its own is refused
    before SubmitJob instead of ending FAILED at start."""
    op = BatchRevisionOperator(
        task_id="big",
        aws_conn_id=arrays_conn,
        job_queue=held_queue,
        image="repo/arrays:1",
        command='echo "${#BIG}"',
        env={"BIG": "x" * 9000},
    )
    with pytest.raises(JobSpecError, match="container overrides; ECS fails a container past 8192"):
        await asyncio.to_thread(op.execute, {"ti": MappedTI("big", 3, 5, uuid.uuid4().hex)})  # type: ignore[arg-type]
    assert HeldJobs.submitted(held_queue) == []
    out, err = capfd.readouterr()
    assert "not an array element: its command and env values do not fit" in out + err
