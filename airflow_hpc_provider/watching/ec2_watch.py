"""Follow one ephemeral instance to its end through the SSM tunnel, then archive its log and terminate it.

Used by :class:`~airflow_hpc_provider.triggers.ec2.Ec2InstanceTrigger` (in the triggerer) and by the
operator when it does not defer. The probing is the shared :class:`~airflow_hpc_provider.watching.cluster.ClusterPoller`
over an :class:`~airflow_hpc_provider.hooks.ssm.SsmTransport` with the EC2 runner dialect: one script per
interval reads the runner's phase/sentinel and the new log bytes, with the log cursor kept on the
instance and moved only past lines written to the task log (a restarted triggerer drops no line;
see the poller's delivery rules for what it may replay).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_hpc_provider.dialects import ec2
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.hooks.ec2 import Ec2InstanceHook
from airflow_hpc_provider.hooks.ssm import SsmTransport, SsmTunnelTarget
from airflow_hpc_provider.jobs import WatchedJob
from airflow_hpc_provider.watching.cluster import ClusterPoller, PollerSettings
from airflow_hpc_provider.watching.delivery import LogChannel
from airflow_hpc_provider.watching.events import (
    Outcome,
    WatchOutcome,
)
from airflow_hpc_provider.watching.ssh_watch import follow


@dataclass(frozen=True)
class InstanceWatch:
    """Everything needed to follow one instance; all plain values (a trigger serializes them)."""

    tunnel: SsmTunnelTarget
    run_dir: str
    poll_interval_s: float = 15.0
    deadline: float | None = None  # epoch seconds
    unreachable_timeout_s: float = 300.0
    archive_path: str | None = None  # a local file for the whole log
    archive_s3_uri: str | None = None

    @property
    def instance_id(self) -> str:
        return self.tunnel.instance_id


@dataclass
class Followed:
    outcome: WatchOutcome
    archived: list[str] = field(default_factory=list)
    log_bytes: int | None = None

    def payload(self) -> dict[str, Any]:
        return {**self.outcome.to_dict(), "archived": self.archived, "log_bytes": self.log_bytes}


async def follow_instance(watch: InstanceWatch, log: logging.Logger | Any) -> Followed:
    """Stream the job's output into ``log`` until the sentinel appears, the deadline passes or the
    instance stays unreachable too long; archive the whole log when it ended. Terminates nothing."""
    transport = SsmTransport(watch.tunnel)
    dialect = ec2.Ec2RunnerDialect(watch.run_dir)
    settings = PollerSettings(
        interval_s=watch.poll_interval_s,
        # An instance is one host: back off gently, the unreachable timeout below decides when to stop.
        max_backoff_s=max(watch.poll_interval_s, min(60.0, watch.poll_interval_s * 4)),
        # An instance that stays unreachable may never come back: the engine gives up on it.
        give_up_after_s=watch.unreachable_timeout_s,
    )
    poller = ClusterPoller(transport, dialect, settings)
    job = WatchedJob(
        job_id=watch.instance_id, log_path=ec2.log_path(watch.run_dir), cursor_path=ec2.cursor_path(watch.run_dir)
    )
    events = poller.watch(job)
    try:
        # An instance that stays unreachable ends the watch from the engine (give_up_after_s: an error).
        what = f"EC2 instance {watch.instance_id}"
        channel = LogChannel.of_this_process()
        outcome = await follow(events, poller, watch.instance_id, log, channel, what, deadline=watch.deadline)
        followed = Followed(outcome)
        if outcome.kind is Outcome.ENDED:
            await _archive(transport, watch, followed, log)
        return followed
    finally:
        await events.aclose()
        await poller.close()


async def _archive(transport: SsmTransport, watch: InstanceWatch, followed: Followed, log: Any) -> None:
    """Copy the whole log (the stream may have been cut by size) to the archive places."""
    try:
        result = await transport.run(f"cat -- {quote(ec2.log_path(watch.run_dir))}\n")
    except Exception as error:  # the outcome matters more than its copy
        log.warning("could not copy the job's log from %s: %s", watch.instance_id, error)
        return
    data = result.stdout
    followed.log_bytes = len(data)
    if watch.archive_path:
        path = Path(watch.archive_path)
        await asyncio.to_thread(_write_file, path, data)
        followed.archived.append(str(path))
        log.info("Archived the whole log (%d bytes) of %s to %s", len(data), watch.instance_id, path)
    if watch.archive_s3_uri:
        hook = Ec2InstanceHook(watch.tunnel.aws_conn_id, watch.tunnel.region_name)
        try:
            await asyncio.to_thread(hook.put_archive, watch.archive_s3_uri, data)
        except Exception as error:
            log.warning("could not archive the log to %s: %s", watch.archive_s3_uri, error)
        else:
            followed.archived.append(watch.archive_s3_uri)
            log.info("Archived the whole log of %s to %s", watch.instance_id, watch.archive_s3_uri)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


async def terminate_instance(aws_conn_id: str | None, region_name: str | None, instance_id: str) -> None:
    hook = Ec2InstanceHook(aws_conn_id, region_name)
    await asyncio.to_thread(hook.terminate, [instance_id])
