"""What the Batch poller (:mod:`.batch`) keeps per watched job, and the one event only Batch sends.

A track holds the job's watchers (one queue each), its array children when their logs are
followed, what the absence rules remember (:mod:`.rules`), its CloudWatch read position
(:mod:`.batch_logs`) and whether its claim tag is set.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from airflow_hpc_provider.jobs import JobStatus
from airflow_hpc_provider.watching.batch_logs import LogPosition
from airflow_hpc_provider.watching.events import WatchEvent
from airflow_hpc_provider.watching.rules import Standing


@dataclass(frozen=True)
class LogProgress:
    """The lines sent before this event reach up to ``position``: save it once they are logged."""

    position: dict[str, Any]


BatchWatchEvent = WatchEvent | LogProgress


@dataclass
class BatchTrack:
    job_id: str
    include_children: bool
    position: LogPosition
    queues: list[asyncio.Queue[BatchWatchEvent]] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    standing: Standing = field(init=False)  # what the absence rules remember (rules.py)
    claim: str | None = None  # the claim tag's value, when a watcher owns the job
    claimed: bool = False
    claim_failures: int = 0

    def __post_init__(self) -> None:
        self.standing = Standing(self.job_id)

    @property
    def last(self) -> JobStatus | None:
        return self.standing.last

    def send(self, event: BatchWatchEvent) -> None:
        for queue in self.queues:
            queue.put_nowait(event)
