"""What a watcher receives from a source of the engine, the generator that hands it over, and how
a watch ended (:class:`WatchOutcome`, what a trigger event carries to the operator).

Every source (SSH clusters, EC2 instances, AWS Batch) speaks these events, so every consumer reads
one vocabulary: a status change, output lines to acknowledge once written, a notice for the task
log, the end, or a watch that cannot go on.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from airflow_hpc_provider.jobs import JobStatus


def _nothing_to_confirm() -> None:
    return None


@dataclass(frozen=True)
class StatusChanged:
    status: JobStatus


@dataclass(frozen=True)
class OutputLines:
    """Lines of the job's output. Call ``acknowledge()`` once they are written to the task log:
    only then may the position after them be committed on the cluster."""

    lines: tuple[str, ...]
    acknowledge: Callable[[], None] = field(default=_nothing_to_confirm, compare=False, repr=False)


@dataclass(frozen=True)
class Notice:
    message: str


@dataclass(frozen=True)
class JobEnded:
    status: JobStatus


@dataclass(frozen=True)
class WatchFailed:
    """The watch cannot go on (SSH refused us). The job itself may be fine and is left alone."""

    message: str


WatchEvent = StatusChanged | OutputLines | Notice | JobEnded | WatchFailed

E = TypeVar("E")


async def until_the_end(queue: asyncio.Queue[E], leave: Callable[[], None]) -> AsyncGenerator[E, None]:
    """A watcher's events from its queue, up to and including ``JobEnded`` or ``WatchFailed``;
    ``leave`` unsubscribes it however the watch ends (finished, cancelled, or closed early)."""
    try:
        while True:
            event = await queue.get()
            yield event
            if isinstance(event, JobEnded | WatchFailed):
                return
    finally:
        leave()


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
