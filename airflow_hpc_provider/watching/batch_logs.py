"""Where a Batch job's CloudWatch log has been delivered up to, and where that survives a triggerer restart.

A trigger is rebuilt from the kwargs it was deferred with, which never change, so the read position
cannot live there. CloudWatch gives every event a timestamp and a unique event id, and
FilterLogEvents returns events from a start time on, oldest first per stream. A position per stream
is therefore "the newest timestamp delivered, and the ids of the events delivered at exactly that
timestamp": reading again from that timestamp and skipping those ids repeats nothing and skips
nothing that arrived in order.

The position is saved in the task instance's own XCom (key :data:`CURSOR_XCOM_KEY`) through the
triggerer's connection to the API server, and only once the lines before it are known to be written
to the task log (:mod:`~airflow_hpc_provider.watching.delivery`). Airflow keeps a task's XComs while it
is deferred and clears them when a new try starts, which is the lifetime wanted: a restarted trigger
of the same try continues where the last one's lines are known to be written; a retry logs from the
start.

The guarantee (see ``batch_watch.py``): no line is lost by a triggerer restart. Lines handed to the
task log but not yet confirmed written when the triggerer died (at most one slice,
``BatchPollerSettings.lines_per_slice`` lines) are read again, after a marker line saying how many
of the next lines may appear twice. Events that CloudWatch ingests later with a timestamp older than
the saved position are not shown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_hpc_provider.supervisor_calls import through_supervisor

log = logging.getLogger(__name__)

CURSOR_XCOM_KEY = "batch_log_position"


@dataclass
class StreamPosition:
    timestamp: int = 0
    ids: set[str] = field(default_factory=set)

    def accept(self, timestamp: int, event_id: str) -> bool:
        """True (and remember it) when this event has not been delivered yet."""
        if timestamp < self.timestamp:
            return False
        if timestamp == self.timestamp:
            if event_id in self.ids:
                return False
            self.ids.add(event_id)
            return True
        self.timestamp = timestamp
        self.ids = {event_id}
        return True


@dataclass
class LogPosition:
    """Per-stream positions of one job (every attempt, every array child it follows)."""

    streams: dict[str, StreamPosition] = field(default_factory=dict)

    def of(self, stream: str) -> StreamPosition:
        if stream not in self.streams:
            self.streams[stream] = StreamPosition()
        return self.streams[stream]

    def to_dict(self) -> dict[str, Any]:
        return {name: {"t": pos.timestamp, "ids": sorted(pos.ids)} for name, pos in self.streams.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LogPosition:
        position = cls()
        for name, pos in (data or {}).items():
            position.streams[str(name)] = StreamPosition(int(pos.get("t", 0)), {str(i) for i in pos.get("ids", [])})
        return position


@dataclass(frozen=True)
class SavedPosition:
    """What a store keeps: the committed position, and that a watch of this try already began.

    ``resumed`` is True when an earlier watch of the same try saved anything (even before its first
    line): lines it handed over after its last commit may then be in the task log already.
    """

    position: LogPosition
    resumed: bool

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> SavedPosition:
        if record is None:
            return cls(LogPosition(), resumed=False)
        return cls(LogPosition.from_dict(record.get("streams")), resumed=bool(record.get("watched", True)))

    @staticmethod
    def record(position: dict[str, Any]) -> dict[str, Any]:
        return {"streams": position}

    @staticmethod
    def before_watching() -> dict[str, Any]:
        """What the operator stores before deferring: the trigger then finds a record (no "XCom not
        found" error in the triggerer's log) that says no watch of this try has begun yet."""
        return {"streams": {}, "watched": False}


class PositionStore(Protocol):
    """Keeps one job's :class:`LogPosition` beyond the life of the process that read the log."""

    async def load(self) -> dict[str, Any] | None: ...

    async def save(self, position: dict[str, Any]) -> None: ...


class MemoryPositionStore:
    """No persistence: for watching on the worker, where a restart is a new try anyway."""

    def __init__(self, initial: dict[str, Any] | None = None) -> None:
        self.saved = initial

    async def load(self) -> dict[str, Any] | None:
        return self.saved

    async def save(self, position: dict[str, Any]) -> None:
        self.saved = position


@dataclass(frozen=True)
class XComPositionStore:
    """The task instance's own XCom, written through the triggerer's supervisor connection."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1

    def _where(self) -> dict[str, Any]:
        return {
            "key": CURSOR_XCOM_KEY,
            "dag_id": self.dag_id,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "map_index": self.map_index,
        }

    async def load(self) -> dict[str, Any] | None:
        from airflow.sdk.execution_time.xcom import XCom

        where = self._where()
        try:
            value = await through_supervisor(lambda: XCom.get_one(**where), lambda: XCom.aget_one(**where))
        except Exception as error:  # no supervisor (a plain script): start from the beginning
            log.debug("no saved log position: %r", error)
            return None
        return value if isinstance(value, dict) else None

    async def save(self, position: dict[str, Any]) -> None:
        from airflow.sdk.execution_time.xcom import XCom

        where = self._where()
        await through_supervisor(lambda: XCom.set(value=position, **where), lambda: XCom.aset(value=position, **where))
