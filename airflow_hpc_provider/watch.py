"""Watch one job to its end through the shared poller, logging as it goes.

Used by every trigger (in the triggerer) and by operators that do not defer (on the worker), so
both paths log the same lines and end with the same :class:`WatchOutcome`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.jobs import JobStatus, WatchedJob
from airflow_hpc_provider.poller import (
    JobEnded,
    Notice,
    OutputLines,
    PollerSettings,
    SchedulerDialect,
    StatusChanged,
    WatchFailed,
    shared_poller,
)


@dataclass(frozen=True)
class WatchOutcome:
    """``ended`` (with the final status), ``timeout`` (deadline passed), or ``error`` (cannot watch)."""

    kind: str
    job_id: str
    status: JobStatus | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "job_id": self.job_id,
            "status": None if self.status is None else self.status.to_dict(),
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WatchOutcome:
        status = data.get("status")
        return cls(
            kind=str(data["kind"]),
            job_id=str(data["job_id"]),
            status=None if status is None else JobStatus.from_dict(status),
            message=data.get("message"),
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
    """Stream the job's state changes and output into ``log`` until it ends or the deadline passes."""
    settings = PollerSettings(interval_s=interval_s)
    async with shared_poller(target, dialect, settings) as poller:
        events = poller.watch(job)
        try:
            while True:
                remaining = None if deadline is None else deadline - time.time()
                if remaining is not None and remaining <= 0:
                    return WatchOutcome("timeout", job.job_id, message="the task's time limit passed")
                try:
                    async with asyncio.timeout(remaining):
                        event = await anext(events)
                except TimeoutError:
                    return WatchOutcome("timeout", job.job_id, message="the task's time limit passed")
                if isinstance(event, OutputLines):
                    for line in event.lines:
                        log.info("%s", line)
                elif isinstance(event, StatusChanged):
                    log.info("%s job %s: %s", dialect.name, job.job_id, event.status.describe())
                elif isinstance(event, Notice):
                    log.warning("%s", event.message)
                elif isinstance(event, JobEnded):
                    return WatchOutcome("ended", job.job_id, status=event.status)
                elif isinstance(event, WatchFailed):
                    return WatchOutcome("error", job.job_id, message=event.message)
        finally:
            await events.aclose()


async def cancel_job(target: SshTarget, dialect: SchedulerDialect, job_id: str) -> None:
    """Cancel through the process's shared connection to the cluster (opened if there is none)."""
    async with shared_poller(target, dialect, PollerSettings()) as poller:
        await poller.cancel([job_id])
