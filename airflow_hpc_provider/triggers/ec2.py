"""The trigger a deferred ``Ec2EphemeralOperator`` waits on: follows the instance, then terminates it."""

from __future__ import annotations

import asyncio
from typing import Any

import airflow_hpc_provider.aws_extra  # noqa: F401  (first: names the extra when it is missing)
from airflow_hpc_provider.hooks.ssm import SsmTunnelTarget
from airflow_hpc_provider.triggers.base import HpcTrigger
from airflow_hpc_provider.watching.ec2_watch import InstanceWatch, follow_instance, terminate_instance
from airflow_hpc_provider.watching.events import Outcome, WatchOutcome


class Ec2InstanceTrigger(HpcTrigger):
    """Streams the instance's job log into the task log; on the sentinel archives the log, reads the
    exit code and terminates the instance. Fires once.

    The instance is terminated on every end this trigger reaches itself (ended, time limit, unreachable)
    and when a user stops the task (``on_kill``), never when the trigger is merely cancelled because the
    triggerer restarts or hands it to another triggerer.

    :param instance_id: the instance.
    :param run_dir: the runner's directory on the instance.
    :param host_keys: the host keys verified at start-up (public keys), pinned for every reconnect.
    :param host_key_check: ``pinned`` (normal) or ``off`` (the task opted out explicitly).
    :param deadline: epoch seconds; past it the trigger terminates the instance and fires ``timeout``.
    :param unreachable_timeout: seconds without a successful probe before giving up (and terminating).
    """

    fields = (
        "instance_id",
        "run_dir",
        "aws_conn_id",
        "region_name",
        "os_user",
        "tunnel",
        "host_key_check",
        "host_keys",
        "poll_interval",
        "deadline",
        "unreachable_timeout",
        "archive_path",
        "archive_s3_uri",
    )
    stop_words = ("Terminating", "Terminated")

    def __init__(
        self,
        instance_id: str,
        run_dir: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        os_user: str = "ec2-user",
        tunnel: str = "ssh-session",
        host_key_check: str = "pinned",
        host_keys: list[str] | tuple[str, ...] = (),
        poll_interval: float = 15.0,
        deadline: float | None = None,
        unreachable_timeout: float = 300.0,
        archive_path: str | None = None,
        archive_s3_uri: str | None = None,
    ) -> None:
        super().__init__()
        self.instance_id = instance_id
        self.run_dir = run_dir
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.os_user = os_user
        self.tunnel = tunnel
        self.host_key_check = host_key_check
        self.host_keys = list(host_keys)
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.unreachable_timeout = unreachable_timeout
        self.archive_path = archive_path
        self.archive_s3_uri = archive_s3_uri

    def watch(self) -> InstanceWatch:
        return InstanceWatch(
            tunnel=SsmTunnelTarget(
                instance_id=self.instance_id,
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                os_user=self.os_user,
                tunnel=self.tunnel,
                host_key_check=self.host_key_check,
                host_keys=tuple(self.host_keys),
            ),
            run_dir=self.run_dir,
            poll_interval_s=self.poll_interval,
            deadline=self.deadline,
            unreachable_timeout_s=self.unreachable_timeout,
            archive_path=self.archive_path,
            archive_s3_uri=self.archive_s3_uri,
        )

    def describe(self) -> str:
        return f"EC2 instance {self.instance_id}"

    async def follow(self) -> dict[str, Any]:
        try:
            followed = await follow_instance(self.watch(), self.log)
            payload = followed.payload()
        except asyncio.CancelledError:
            raise  # a triggerer restart or hand-over: the instance stays, the next trigger adopts it
        except Exception as error:  # a bug or a broken setting: still never leave the instance running
            payload = WatchOutcome(
                Outcome.ERROR, self.instance_id, message=f"{type(error).__name__}: {error}"
            ).to_dict()
        why = "the task ended" if payload["kind"] == Outcome.ENDED else str(payload.get("message"))
        self.log.info("Terminating EC2 instance %s (%s)", self.instance_id, why)
        try:
            await self.stop()
            payload["terminated"] = True
        except Exception as error:  # the operator tries again in execute_complete
            self.log.error("could not terminate %s: %s", self.instance_id, error)
            payload["terminated"] = False
        return {**payload, "aws_conn_id": self.aws_conn_id, "instance_id": self.instance_id}

    def ending_seen(self, payload: dict[str, Any]) -> bool:
        return True  # every end this trigger reaches itself terminated the instance

    async def stop(self) -> None:
        await terminate_instance(self.aws_conn_id, self.region_name, self.instance_id)
