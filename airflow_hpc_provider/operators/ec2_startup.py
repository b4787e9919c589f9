"""An ephemeral instance's start-up: running, sshd reachable through SSM, host key verified, task delivered.

Everything happens within the operator's start-up timeout; when it runs out, the
:class:`~airflow_hpc_provider.errors.StartupError` names the last thing seen go wrong (the
instance's state and EC2's reason, the SSM session's own error text, sshd's answer), and the
operator terminates the instance.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow_hpc_provider.dialects import ec2
from airflow_hpc_provider.errors import ClusterAuthError, ClusterUnreachableError, RemoteCommandError, StartupError
from airflow_hpc_provider.hooks.ec2 import Ec2InstanceHook
from airflow_hpc_provider.hooks.ssm import SsmTransport, SsmTunnelTarget

# Auth refusals are retried a few times during start-up: on a fresh instance the Instance Connect
# hook of sshd can lag behind sshd itself.
STARTUP_AUTH_ATTEMPTS = 3


@dataclass(frozen=True)
class Delivery:
    """What reaches the instance once it answers: the task's script and env values, in its run directory."""

    instance_id: str
    run_dir: str
    script: str
    env: Mapping[str, str]


class StartupProgress:
    """The last thing seen go wrong while an instance comes up: what a start-up timeout reports."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.last = "nothing: DescribeInstances never answered"

    def saw(self, what: str) -> None:
        self.last = what


async def start_up(
    hook: Ec2InstanceHook,
    tunnel: Callable[[str | None], SsmTunnelTarget],
    delivery: Delivery,
    *,
    timeout: timedelta,
    poll_interval_s: float,
    log: logging.Logger | Any,
) -> tuple[str, ...]:
    """Bring the instance to the point where it runs the task; return the host keys verified on the way.

    ``tunnel(availability_zone)`` is the SSM tunnel to the instance (the zone is known once it runs).
    """
    progress = StartupProgress(delivery.instance_id)
    try:
        async with asyncio.timeout(timeout.total_seconds()):
            return await _come_up(hook, tunnel, delivery, progress, poll_interval_s, log)
    except TimeoutError:
        raise StartupError(
            f"instance {delivery.instance_id} was not running with sshd reachable through SSM within "
            f"{timeout}; last seen: {progress.last}; it was terminated"
        ) from None


async def _come_up(
    hook: Ec2InstanceHook,
    tunnel: Callable[[str | None], SsmTunnelTarget],
    delivery: Delivery,
    progress: StartupProgress,
    poll_interval_s: float,
    log: logging.Logger | Any,
) -> tuple[str, ...]:
    instance_id, run_dir = delivery.instance_id, delivery.run_dir
    while True:
        instance = await asyncio.to_thread(hook.describe, instance_id)
        reason = f" ({instance.state_reason})" if instance.state_reason else ""
        if instance.state == "running":
            break
        if instance.state != "pending":
            raise StartupError(f"instance {instance_id} is {instance.state}{reason}, not starting; it was terminated")
        progress.saw(f"the instance is still pending{reason or ' (EC2 gives no reason)'}")
        await asyncio.sleep(min(5.0, poll_interval_s))
    log.info("EC2 instance %s is running; reaching its sshd through SSM", instance_id)
    progress.saw("the instance is running; no answer through the SSM tunnel yet")
    transport = SsmTransport(tunnel(instance.availability_zone))
    try:
        auth_failures = 0
        while True:
            try:
                result = await transport.run(ec2.readiness_script(run_dir), timeout_s=60)
                if result.text.strip() == "ready":
                    break
                progress.saw("sshd answers, but the boot script has not prepared the instance yet")
            except ClusterAuthError as error:
                progress.saw(str(error))
                auth_failures += 1
                if auth_failures >= STARTUP_AUTH_ATTEMPTS:
                    raise
            except ClusterUnreachableError as error:
                progress.saw(str(error))
                log.info("not reachable yet: %s", error)
            await asyncio.sleep(min(5.0, poll_interval_s))
        delivered = await transport.run(ec2.render_payload(run_dir, delivery.script, delivery.env), timeout_s=120)
        if delivered.exit_status != 0:
            raise RemoteCommandError("delivering the task", instance_id, delivered.exit_status, delivered.error_text)
        if delivered.text.strip() == "already":
            log.info("The task was already delivered to %s (an earlier try did it)", instance_id)
        else:
            log.info("Delivered the task's script and %d env value(s) to %s", len(delivery.env), instance_id)
        return transport.host_keys
    finally:
        await transport.close()
