"""Watch one job to its end through the shared poller, logging as it goes.

Used by every trigger (in the triggerer) and by operators that do not defer (on the worker), so
both paths log the same lines and end with the same :class:`WatchOutcome`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow_hpc_provider.dialects.base import SchedulerDialect
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.jobs import WatchedJob
from airflow_hpc_provider.watching.cluster import ClusterPoller, PollerSettings, shared_poller
from airflow_hpc_provider.watching.consume import consume
from airflow_hpc_provider.watching.delivery import LogChannel, confirm_written, log_lines
from airflow_hpc_provider.watching.events import (
    OutputLines,
    WatchEvent,
    WatchOutcome,
)

# How long the end of a watch waits for its last commit to reach the cluster.
CONFIRM_TIMEOUT_S = 10.0
# How long a stopping watch still waits for lines it logged to be written.
STOPPING_CONFIRM_S = 2.0


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
            what = f"{dialect.name} job {job.job_id}"
            return await follow(events, poller, job.job_id, log, channel, what, deadline=deadline)
        finally:
            await events.aclose()


async def follow(
    events: AsyncIterator[WatchEvent],
    poller: ClusterPoller,
    job_id: str,
    log: logging.Logger | Any,
    channel: LogChannel,
    what: str,
    *,
    deadline: float | None = None,
) -> WatchOutcome:
    """Log one job's events from a cluster poller (output acknowledged once written); its outcome."""

    async def deliver(event: OutputLines) -> None:
        await log_lines(log, event.lines, channel)
        await acknowledge_when_written(event, channel)

    return await consume(
        events,
        job_id,
        log,
        what=what,
        deadline=deadline,
        deliver=deliver,
        # What was written is committed before the outcome leaves: a watcher started after this
        # one (a restarted triggerer that never got the event through) replays nothing.
        before_the_end=lambda: poller.confirm(job_id, timeout_s=CONFIRM_TIMEOUT_S),
    )


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
