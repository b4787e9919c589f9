"""Ec2EphemeralOperator end to end against moto + instances that boot on this host + the local tunnel.

Every test ends by checking that moto has no instance of ours left running.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowTaskTimeout, TaskDeferred

from airflow_hpc_provider.dialects import ec2
from airflow_hpc_provider.errors import InstanceLimitError, JobFailedError, StartupError, SubmissionError
from airflow_hpc_provider.operators.ec2 import (
    Ec2EphemeralOperator,
    Ec2ReaperOperator,
)
from airflow_hpc_provider.triggers.ec2 import Ec2InstanceTrigger
from tests.integration.batch.moto_batch import MotoAws
from tests.integration.batch.test_batch_definitions import FakeTI
from tests.integration.ec2.conftest import CONN_ID
from tests.integration.ec2.fake_ec2 import FakeInstances, StandIns, kill_session

PREFIX = "airflow-hpc-test"
# The operator and its trigger log here (a plain logger: Airflow's own are structlog proxies).
TASK_LOG = logging.getLogger("test.ec2.task_log")
TASK_LOG.setLevel(logging.INFO)
SECRET = "hunter2-$(id)-`id`"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def task_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lines]:
    """Everything the operator and its trigger log: what reaches the task log."""
    monkeypatch.setattr(Ec2EphemeralOperator, "log", TASK_LOG)
    handler = Lines()
    TASK_LOG.addHandler(handler)
    yield handler
    TASK_LOG.removeHandler(handler)


def operator(**kwargs: Any) -> Ec2EphemeralOperator:
    defaults: dict[str, Any] = {
        "task_id": f"t-{uuid.uuid4().hex[:6]}",
        "aws_conn_id": CONN_ID,
        "image": "public.ecr.aws/docker/library/bash:5.2",
        "command": 'echo "line one"\necho "secret is $TOKEN" > /dev/null\necho "line two"\n',
        "env": {"TOKEN": SECRET},
        "time_limit": timedelta(minutes=2),
        "poll_interval": 0.5,
        "startup_timeout": timedelta(seconds=30),
        "idle_slack": timedelta(minutes=5),
    }
    return Ec2EphemeralOperator(**{**defaults, **kwargs})


def ti_for(op: Ec2EphemeralOperator, try_number: int = 1, run_id: str | None = None) -> FakeTI:
    ti = FakeTI(op.task_id, try_number=try_number, run_id=run_id or f"run-{uuid.uuid4().hex[:6]}")
    ti.dag_id = "ec2_tests"
    return ti


async def execute(op: Ec2EphemeralOperator, ti: FakeTI) -> Any:
    """On a worker thread, as Airflow runs it (``execute`` uses asyncio.run of its own)."""
    return await asyncio.to_thread(op.execute, {"ti": ti})  # type: ignore[arg-type]


async def defer(op: Ec2EphemeralOperator, ti: FakeTI) -> Ec2InstanceTrigger:
    with pytest.raises(TaskDeferred) as deferred:
        await execute(op, ti)
    trigger = deferred.value.trigger
    assert isinstance(trigger, Ec2InstanceTrigger)
    trigger._log = TASK_LOG
    return trigger


async def fire(trigger: Ec2InstanceTrigger) -> dict[str, Any]:
    events = [event async for event in trigger.run()]
    assert len(events) == 1
    return dict(events[0].payload)


def live_instances(aws: MotoAws) -> list[str]:
    pages = aws.client("ec2").describe_instances(
        Filters=[
            {"Name": "tag-key", "Values": [f"{PREFIX}:key"]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ]
    )
    return [i["InstanceId"] for r in pages["Reservations"] for i in r["Instances"]]


@pytest.fixture(autouse=True)
def nothing_left_running(moto_aws: MotoAws) -> Iterator[None]:
    yield
    assert live_instances(moto_aws) == [], "an instance was left running"


def tags_of(aws: MotoAws, instance_id: str) -> dict[str, str]:
    reservations = aws.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return ec2.tag_dict(reservations[0]["Instances"][0].get("Tags"))


def user_data_of(aws: MotoAws, instance_id: str) -> str:
    import base64

    answer = aws.client("ec2").describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(answer["UserData"]["Value"]).decode()


async def test_a_successful_task_streams_its_log_archives_it_and_terminates_the_instance(
    aws_ec2: MotoAws, stand_ins: StandIns, task_log: Lines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(tmp_path / "logs"))
    op = operator(partition="big", extra_tags={"team": "research"})
    ti = ti_for(op)
    trigger = await defer(op, ti)
    instance_id = trigger.instance_id
    tags = tags_of(aws_ec2, instance_id)
    assert tags[f"{PREFIX}:dag"] == "ec2_tests" and tags[f"{PREFIX}:task"] == op.task_id
    assert tags[f"{PREFIX}:run"] == ti.run_id and tags[f"{PREFIX}:try"] == "1"
    assert tags[f"{PREFIX}:backend"] == CONN_ID and tags["team"] == "research"
    described = aws_ec2.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["InstanceType"] == "m5.large"
    behaviour = aws_ec2.client("ec2").describe_instance_attribute(
        InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
    )
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    # the trigger carries public host keys and no env value
    assert SECRET not in repr(trigger.serialize()) and trigger.host_keys
    payload = await fire(trigger)
    assert payload["kind"] == "ended" and payload["status"]["exit_code"] == 0 and payload["terminated"]
    assert "line one" in task_log.lines and "line two" in task_log.lines
    archive = Path(payload["archived"][0])
    assert archive.is_relative_to(tmp_path / "logs")
    assert "line one\nline two\n" in archive.read_text()
    assert op.execute_complete({"ti": ti}, payload) == instance_id  # type: ignore[arg-type]
    assert SECRET not in task_log.text and SECRET not in user_data_of(aws_ec2, instance_id)


async def test_a_failing_exit_code_fails_the_task_with_the_last_lines(
    aws_ec2: MotoAws, stand_ins: StandIns, task_log: Lines
) -> None:
    op = operator(command="echo about to fail\nexit 7\n", env={})
    ti = ti_for(op)
    payload = await fire(await defer(op, ti))
    assert payload["status"]["exit_code"] == 7
    with pytest.raises(JobFailedError, match=r"ended FAILED \(exit 7\)") as raised:
        op.execute_complete({"ti": ti}, payload)  # type: ignore[arg-type]
    assert "about to fail" in str(raised.value)


async def test_the_log_reaches_s3_too_when_asked(aws_ec2: MotoAws, stand_ins: StandIns, task_log: Lines) -> None:
    bucket = f"logs-{uuid.uuid4().hex[:8]}"
    aws_ec2.client("s3").create_bucket(Bucket=bucket)
    op = operator(archive_s3_prefix=f"s3://{bucket}/ec2")
    payload = await fire(await defer(op, ti_for(op)))
    uri = next(place for place in payload["archived"] if place.startswith("s3://"))
    key = uri.removeprefix(f"s3://{bucket}/")
    body = aws_ec2.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert "line one" in body


async def test_a_retry_adopts_the_instance_its_first_try_left_running(
    aws_ec2: MotoAws, stand_ins: StandIns, task_log: Lines
) -> None:
    op = operator(command="echo adopted-run\nsleep 2\n")
    first = ti_for(op)
    trigger = await defer(op, first)
    # The first try's worker died while deferred; the second try finds the instance by its tags.
    retry = ti_for(op, try_number=2, run_id=first.run_id)
    again = await defer(operator(task_id=op.task_id, command="echo adopted-run\nsleep 2\n"), retry)
    assert again.instance_id == trigger.instance_id and again.run_dir == trigger.run_dir
    assert "Adopted EC2 instance" in task_log.text and "already delivered" in task_log.text
    payload = await fire(again)
    assert payload["status"]["exit_code"] == 0
    assert task_log.lines.count("adopted-run") == 1


async def test_a_launch_error_launches_nothing(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    fake_instances.launch_error = "InsufficientInstanceCapacity"
    op = operator()
    with pytest.raises(SubmissionError, match="InsufficientInstanceCapacity"):
        await execute(op, ti_for(op))


async def test_an_instance_whose_sshd_never_answers_in_time_is_terminated(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    fake_instances.boot = False  # it runs, but nothing on it ever comes up
    op = operator(startup_timeout=timedelta(seconds=3), host_key_check="off")
    with pytest.raises(StartupError, match=r"within 0:00:03; last seen: .+; it was terminated"):
        await execute(op, ti_for(op))


async def test_an_instance_stuck_pending_fails_start_up_with_ec2s_reason(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    fake_instances.stay_pending = ("Server.InsufficientInstanceCapacity", "Insufficient capacity in us-east-1a")
    op = operator(startup_timeout=timedelta(seconds=3))
    with pytest.raises(StartupError) as raised:
        await execute(op, ti_for(op))
    text = str(raised.value)
    print(f"\n{text}")
    assert "within 0:00:03" in text and "it was terminated" in text
    assert "still pending (Insufficient capacity in us-east-1a)" in text


async def test_ssm_refusing_the_session_is_named_in_the_start_up_error(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    fake_instances.tunnel_fault = "ssm-refuses"  # the agent never registered: SSM says so
    op = operator(startup_timeout=timedelta(seconds=6), host_key_check="off")
    with pytest.raises(StartupError) as raised:
        await execute(op, ti_for(op))
    text = str(raised.value)
    print(f"\n{text}")
    assert "last seen: cannot reach" in text
    assert "TargetNotConnected" in text and "is not connected" in text  # SSM's own words


async def test_sshd_refusing_behind_the_tunnel_is_named_in_the_start_up_error(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    fake_instances.tunnel_fault = "sshd-refuses"
    op = operator(startup_timeout=timedelta(seconds=6), host_key_check="off")
    with pytest.raises(StartupError) as raised:
        await execute(op, ti_for(op))
    print(f"\n{raised.value}")
    assert "Connection refused" in str(raised.value), str(raised.value)


async def test_a_runner_that_dies_mid_job_fails_the_task_within_a_few_polls_and_not_as_a_time_limit(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns, task_log: Lines
) -> None:
    op = operator(command="echo started\nsleep 60\n")
    ti = ti_for(op)
    trigger = await defer(op, ti)
    running = asyncio.ensure_future(fire(trigger))
    deadline = time.monotonic() + 20
    while "started" not in task_log.lines:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # The runner and its container die (SIGKILL, OOM killer); the instance itself stays up.
    kill_session(fake_instances.processes.pop(trigger.instance_id))
    killed = time.monotonic()
    payload = await asyncio.wait_for(running, 60)
    noticed = time.monotonic() - killed
    assert payload["kind"] == "ended" and payload["terminated"]
    assert payload["status"]["native_state"] == "RUNNER_GONE" and payload["status"]["exit_code"] is None
    assert noticed < 10 * op.poll_interval, f"noticed after {noticed:.1f}s"
    with pytest.raises(JobFailedError, match="runner on the instance died while running"):
        op.execute_complete({"ti": ti}, payload)  # type: ignore[arg-type]


async def test_an_ssh_auth_failure_at_start_up_terminates_the_instance(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = fake_instances.start

    def refusing_start(instance_id: str, user_data: str) -> None:
        fake_instances.refuse_keys.add(instance_id)
        original(instance_id, user_data)

    monkeypatch.setattr(fake_instances, "start", refusing_start)
    op = operator()
    with pytest.raises(Exception, match="refused the key pushed"):
        await execute(op, ti_for(op))


async def test_a_tunnel_that_fails_while_deferred_ends_the_task_and_the_instance(
    aws_ec2: MotoAws, stand_ins: StandIns, task_log: Lines
) -> None:
    op = operator(command="sleep 60\n", unreachable_timeout=timedelta(seconds=3))
    ti = ti_for(op)
    trigger = await defer(op, ti)
    # From now on every session to it is refused (the trigger opens its own link, through the CLI).
    stand_ins.fail_tunnel(trigger.instance_id)
    payload = await fire(trigger)
    assert payload["kind"] == "error" and "unreachable" in payload["message"] and payload["terminated"]
    with pytest.raises(JobFailedError, match="unreachable"):
        op.execute_complete({"ti": ti}, payload)  # type: ignore[arg-type]


async def test_a_user_stopping_the_task_terminates_the_instance(
    aws_ec2: MotoAws, stand_ins: StandIns, task_log: Lines
) -> None:
    op = operator(command="echo started\nsleep 60\n")
    trigger = await defer(op, ti_for(op))
    running = asyncio.ensure_future(fire(trigger))
    deadline = asyncio.get_running_loop().time() + 20
    while "started" not in task_log.lines:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    running.cancel()  # what the triggerer does first ...
    with pytest.raises(asyncio.CancelledError):
        await running
    assert live_instances(aws_ec2) == [trigger.instance_id]  # ... which alone (a restart) ends nothing
    await trigger.on_kill()  # ... then, for a user's mark-failed, on_kill
    assert live_instances(aws_ec2) == []


async def test_the_time_limit_ends_the_task_and_the_instance(
    aws_ec2: MotoAws, stand_ins: StandIns, task_log: Lines
) -> None:
    op = operator(command="sleep 60\n")
    ti = ti_for(op)
    trigger = await defer(op, ti)
    trigger.deadline = time.time() + 2  # as if the time limit were reached now
    payload = await fire(trigger)
    assert payload["kind"] == "timeout" and payload["terminated"]
    with pytest.raises(AirflowTaskTimeout):
        op.execute_complete({"ti": ti}, payload)  # type: ignore[arg-type]


async def test_a_worker_side_kill_terminates_the_instance(aws_ec2: MotoAws, stand_ins: StandIns) -> None:
    op = operator(command="sleep 60\n")
    trigger = await defer(op, ti_for(op))
    op.on_kill()
    assert trigger.instance_id not in live_instances(aws_ec2)


async def test_max_instances_refuses_clearly_beyond_the_cap(aws_ec2: MotoAws, stand_ins: StandIns) -> None:
    first = operator(command="sleep 60\n", max_instances=1)
    trigger = await defer(first, ti_for(first))
    second = operator(max_instances=1)
    try:
        with pytest.raises(InstanceLimitError, match="max_instances is 1: not launching another"):
            await execute(second, ti_for(second))
    finally:
        await trigger.on_kill()


async def test_the_reaper_terminates_instances_whose_task_is_over_and_spares_the_rest(
    aws_ec2: MotoAws, stand_ins: StandIns
) -> None:
    finished = operator(command="sleep 60\n")
    alive = operator(command="sleep 60\n")
    finished_trigger = await defer(finished, ti_for(finished))
    alive_trigger = await defer(alive, ti_for(alive))
    states = {finished.task_id: "failed", alive.task_id: "deferred"}

    def task_state(owner: ec2.TaskTags) -> str | None:
        return states.get(owner.task_id)

    dry = Ec2ReaperOperator(
        task_id="reap", aws_conn_id=CONN_ID, tag_prefix=PREFIX, min_age=timedelta(0), task_state=task_state
    )
    reports = dry.reap()
    assert [(r.instance_id, r.terminated) for r in reports] == [(finished_trigger.instance_id, False)]
    assert "task instance is failed" in reports[0].reason
    assert set(live_instances(aws_ec2)) == {finished_trigger.instance_id, alive_trigger.instance_id}
    real = Ec2ReaperOperator(
        task_id="reap",
        aws_conn_id=CONN_ID,
        tag_prefix=PREFIX,
        min_age=timedelta(0),
        task_state=task_state,
        dry_run=False,
    )
    assert [r.terminated for r in real.reap()] == [True]
    assert live_instances(aws_ec2) == [alive_trigger.instance_id]
    young = Ec2ReaperOperator(
        task_id="reap", aws_conn_id=CONN_ID, tag_prefix=PREFIX, task_state=lambda owner: None, dry_run=False
    )
    assert young.reap() == []  # launched less than min_age ago: left alone
    await alive_trigger.on_kill()
