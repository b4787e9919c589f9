"""A Batch job's CloudWatch lines, read for many jobs at once and handed to their watchers in slices.

The Batch poller (:mod:`.batch`) says which streams of which tracks to read in a poll; this reader
asks the stream planner (:mod:`.batch_streams`) which FilterLogEvents calls to make, sorts the
events of every track by timestamp (equal ones in the order the track lists its streams), skips
what the track's position says was delivered, and sends the new lines in slices of at most
``lines_per_slice``, each followed by the position that covers it (:class:`.batch_tracks.LogProgress`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from botocore.exceptions import ClientError

from airflow_hpc_provider.dialects.batch import LogStream
from airflow_hpc_provider.errors import LogGroupMissing, LogStreamMissing
from airflow_hpc_provider.hooks.batch import error_code, error_text
from airflow_hpc_provider.watching.batch_streams import LogStreamPlanner, WantedStream
from airflow_hpc_provider.watching.batch_tracks import BatchTrack, LogProgress
from airflow_hpc_provider.watching.events import OutputLines

LOOP_TURN_S = 0.02

# service, operation, keyword arguments -> the answer (the poller's one way to call AWS).
AwsCall = Callable[..., Awaitable[dict[str, Any]]]


class CloudWatchLines:
    """Reads the watched streams of a poll and sends each track its new lines."""

    def __init__(self, planner: LogStreamPlanner, call: AwsCall, *, max_log_pages: int, lines_per_slice: int) -> None:
        self._planner = planner
        self._call = call
        self.max_log_pages = max_log_pages
        self.lines_per_slice = lines_per_slice
        self.log_calls = 0  # bench counter only

    async def read(self, reads: list[tuple[BatchTrack, LogStream]], *, ended_ids: set[str]) -> None:
        if not reads:
            return
        # Who reads which stream (a child's stream may also be watched on its own), and in which
        # order a track lists its streams (attempts, then children): that orders equal timestamps.
        owners: dict[tuple[str, str], list[tuple[BatchTrack, LogStream, int]]] = {}
        ranks: dict[str, int] = {}
        for track, stream in reads:
            rank = ranks[track.job_id] = ranks.get(track.job_id, -1) + 1
            owners.setdefault((stream.group, stream.name), []).append((track, stream, rank))
        wanted = [
            WantedStream(
                group,
                name,
                min(t.position.of(f"{group}|{name}").timestamp for t, _, _ in readers),
                # The final lines are read in the poll that sees the end, whatever the stream's schedule.
                last_chance=any(t.job_id in ended_ids for t, _, _ in readers),
            )
            for (group, name), readers in owners.items()
        ]
        report = await self._planner.read(wanted, self._filter)
        found: dict[str, tuple[BatchTrack, list[tuple[int, int, int, LogStream, dict[str, Any]]]]] = {}
        turn = Turn()
        for order, (group, event) in enumerate(report.events):
            for track, stream, rank in owners.get((group, str(event.get("logStreamName"))), ()):
                entry = found.setdefault(track.job_id, (track, []))
                entry[1].append((int(event.get("timestamp", 0)), rank, order, stream, event))
            if order % 256 == 255:
                await turn.take()
        for track, events in found.values():
            events.sort(key=lambda item: item[:3])
            await self._deliver(track, [(stream, event) for _, _, _, stream, event in events], turn)

    async def _deliver(self, track: BatchTrack, events: list[tuple[LogStream, dict[str, Any]]], turn: Turn) -> None:
        """The new lines, in slices each followed by the position that covers it."""
        lines: list[str] = []
        for stream, event in events:
            position = track.position.of(f"{stream.group}|{stream.name}")
            if not position.accept(int(event["timestamp"]), str(event["eventId"])):
                continue
            text = str(event.get("message", "")).rstrip("\n")
            lines.extend(stream.label + line for line in text.split("\n"))
            if len(lines) >= self.lines_per_slice:
                track.send(OutputLines(tuple(lines)))
                track.send(LogProgress(track.position.to_dict()))
                lines = []
                await turn.take()
        if lines:
            track.send(OutputLines(tuple(lines)))
            track.send(LogProgress(track.position.to_dict()))
        await turn.take()

    async def _filter(self, group: str, names: list[str], start: int) -> list[dict[str, Any]]:
        """New events of up to 100 streams from ``start`` on, oldest first (the planner's reader)."""
        try:
            return await self._filter_pages(group, names, start)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
            if "log group" in error_text(error).lower():
                raise LogGroupMissing(error_text(error)) from error
            raise LogStreamMissing(error_text(error)) from error

    async def _filter_pages(self, group: str, names: list[str], start: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(self.max_log_pages):
            request: dict[str, Any] = {"logGroupName": group, "logStreamNames": names, "startTime": start}
            if token:
                request["nextToken"] = token
            self.log_calls += 1
            answer = await self._call("logs", "filter_log_events", **request)
            events += answer.get("events", [])
            token = answer.get("nextToken")
            if not token:
                break
        return events


class Turn:
    """Gives the event loop back to other tasks once ``LOOP_TURN_S`` went by: a triggerer taking over
    thousands of waiting lines must not hold every other trigger while it sorts them."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    async def take(self) -> None:
        if time.monotonic() - self.started > LOOP_TURN_S:
            await asyncio.sleep(0)
            self.started = time.monotonic()
