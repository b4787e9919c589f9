"""Watch one job to its end through the shared poller, logging as it goes.

Used by every trigger (in the triggerer) and by operators that do not defer (on the worker), so
both paths log the same lines and end with the same :class:`WatchOutcome`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_hpc_provider.dialects.base import SchedulerDialect
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.jobs import JobStatus, WatchedJob
from airflow_hpc_provider.watching.cluster import (
    JobEnded,
    Notice,
    OutputLines,
    PollerSettings,
    StatusChanged,
    WatchEvent,
    WatchFailed,
    shared_poller,
)
from airflow_hpc_provider.watching.delivery import LogChannel, confirm_written, log_lines

if TYPE_CHECKING:
    from airflow_hpc_provider.watching.cluster import ClusterPoller

# How long the end of a watch waits for its last commit to reach the cluster.
CONFIRM_TIMEOUT_S = 10.0
# How long a stopping watch still waits for lines it logged to be written.
STOPPING_CONFIRM_S = 2.0


class Outcome(enum.StrEnum):
    """How a watch ended; the value is what the trigger event carries as ``kind``."""

    ENDED = "ended"
    """The job ended; the outcome carries its final status (success or not is the status's to say)."""
    TIMEOUT = "timeout"
    """The task's time limit passed first; the operator cancels the job."""
    ERROR = "error"
    """The job could not be watched (a connection refused, an answer that cannot be read)."""


@dataclass(frozen=True)
class WatchOutcome:
    """How a watch ended (:class:`Outcome`), with the final status when the job ended."""

    kind: Outcome
    job_id: str
    status: JobStatus | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "job_id": self.job_id,
            "status": None if self.status is None else self.status.to_dict(),
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WatchOutcome:
        status = data.get("status")
        # An unknown kind raises ValueError: an event is never read as some outcome it did not say.
        kind = Outcome(data["kind"])
        return cls(
            kind, str(data["job_id"]), None if status is None else JobStatus.from_dict(status), data.get("message")
        )


async def watch_job(
    target: SshTarget,
    dialect: SchedulerDialect,
    job: WatchedJob,
    log: logging.Logger | Any,
    *,
    interval_s: float,
    deadline: float | None,
) -> WatchOutcome:
    """Stream the job's state changes and output into ``log`` until it ends or the deadline passes.

    Output lines are acknowledged to the poller only once they are written to the task log (see
    :mod:`~airflow_hpc_provider.watching.delivery`), so the cursor on the cluster never runs ahead of it.
    """
    settings = PollerSettings(interval_s=interval_s)
    channel = LogChannel.of_this_process()
    async with shared_poller(target, dialect, settings) as poller:
        events = poller.watch(job)
        try:
            remaining = None if deadline is None else deadline - time.time()
            if remaining is not None and remaining <= 0:
                return WatchOutcome(Outcome.TIMEOUT, job.job_id, message="the task's time limit passed")
            try:
                async with asyncio.timeout(remaining):
                    return await follow(events, poller, job, log, channel, dialect.name)
            except TimeoutError:
                return WatchOutcome(Outcome.TIMEOUT, job.job_id, message="the task's time limit passed")
        finally:
            await events.aclose()


async def follow(
    events: AsyncIterator[WatchEvent],
    poller: ClusterPoller,
    job: WatchedJob,
    log: logging.Logger | Any,
    channel: LogChannel,
    what: str,
) -> WatchOutcome:
    """Log one job's events as they come; the outcome once it ends or cannot be watched."""
    async for event in events:
        if isinstance(event, OutputLines):
            await log_lines(log, event.lines, channel)
            await acknowledge_when_written(event, channel)
        elif isinstance(event, StatusChanged):
            log.info("%s job %s: %s", what, job.job_id, event.status.describe())
        elif isinstance(event, Notice):
            log.warning("%s", event.message)
        elif isinstance(event, JobEnded):
            # What was written is committed before the outcome leaves: a watcher started after
            # this one (a restarted triggerer that never got the event through) replays nothing.
            await poller.confirm(job.job_id, timeout_s=CONFIRM_TIMEOUT_S)
            return WatchOutcome(Outcome.ENDED, job.job_id, status=event.status)
        elif isinstance(event, WatchFailed):
            return WatchOutcome(Outcome.ERROR, job.job_id, message=event.message)
    return WatchOutcome(Outcome.ERROR, job.job_id, message="the watch ended without an outcome")


async def acknowledge_when_written(event: OutputLines, channel: LogChannel) -> None:
    """Acknowledge lines once they are written to the task log. Stopped meanwhile (a triggerer
    handing its triggers over), it still lets the supervisor take them for a moment, so that a
    graceful stop commits lines it logged rather than have the next triggerer replay them."""
    confirming = asyncio.ensure_future(_confirm(event, channel))
    try:
        await asyncio.shield(confirming)
    except asyncio.CancelledError:
        await asyncio.wait({confirming}, timeout=STOPPING_CONFIRM_S)
        raise


async def _confirm(event: OutputLines, channel: LogChannel) -> None:
    if await confirm_written(channel):
        event.acknowledge()


async def cancel_job(
    target: SshTarget, dialect: SchedulerDialect, job_id: str, *, cursor_path: str | None = None
) -> None:
    """Cancel through the process's shared connection to the cluster (opened if there is none).

    With ``cursor_path``, the job is claimed first: a job cancelled on purpose is never adopted by
    a later try of its task (see :attr:`~airflow_hpc_provider.jobs.WatchedJob.claimed_by_trigger`).
    """
    async with shared_poller(target, dialect, PollerSettings()) as poller:
        await poller.cancel([job_id], claims=() if cursor_path is None else (cursor_path,))
