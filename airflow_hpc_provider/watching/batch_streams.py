"""Read many CloudWatch streams with few FilterLogEvents calls, also when some do not exist yet.

FilterLogEvents takes up to 100 stream names per call, but one name that does not exist fails the
whole call (``ResourceNotFoundException: The specified log stream does not exist``). A Batch job's
stream name is known from DescribeJobs before the container has written its first line, so some
watched streams are routinely missing. Reading them one per call (what a naive fallback does) costs
N calls per poll; this planner keeps the cost at ``ceil(existing / 100)`` calls for the streams known
to exist, one call per 100 new streams, plus at most ``extra_calls_per_poll`` for finding out which
streams exist:

* a stream is *confirmed* once a call naming it succeeded; confirmed streams are read 100 per call;
* new streams are tested as sets of up to 100 per call: a set whose call succeeds is confirmed at
  once; a set that fails is halved (group testing), the largest halves first. When one half
  succeeds, the other is known to hold the missing stream, so it is halved again without a call;
* a single stream that fails is *missing*: it is tried again alone after a delay that doubles up to
  ``max_probe_s``, at most ``probes_per_poll`` of them per poll (within the same budget);
* a missing log group (no job has logged there yet) fails every set of that group: the group is
  tried again later, as a whole, without testing its streams one by one;
* a stream whose job has ended (``last_chance``) is read in this poll whatever its schedule or the
  budget: the poll that sees a job end reads its final lines before the end is reported, also when
  the stream appeared only after a poll found it missing.

At N = 1,000 streams with 1 % missing this is 10 calls per poll once the missing ones are known
(and about 11 while they are retried), at most 18 while they are being found (``bench/batch_poller.py``).

The planner only decides which names go into which call; the caller's ``reader`` makes the call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_hpc_provider.dialects.batch import LOG_STREAMS_PER_CALL
from airflow_hpc_provider.errors import LogGroupMissing, LogStreamMissing

StreamId = tuple[str, str]  # (log group, stream name)


# group, stream names, start time (ms) -> events, each with "logStreamName", oldest first.
Reader = Callable[[str, list[str], int], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True)
class WantedStream:
    group: str
    name: str
    start_ms: int  # read events from this timestamp on
    last_chance: bool = False  # its job has ended: read it now (see the module docstring)

    @property
    def id(self) -> StreamId:
        return (self.group, self.name)


@dataclass
class _Suspects:
    """Streams not confirmed yet, tested with one call."""

    streams: list[StreamId]
    due: float
    known_failing: bool = False  # these exact streams hold a missing one: halve without a call
    # The other half of a failed set: when one half's call succeeds, the other must hold the
    # missing stream and is halved without a call of its own.
    partner: _Suspects | None = None
    delay_s: float = 0.0  # a single missing stream: its current retry delay
    fresh: bool = False  # streams never tested: their first call is their share of one per 100

    @property
    def group(self) -> str:
        return self.streams[0][0]


@dataclass
class ReadReport:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (group, event)
    calls: int = 0
    missing: int = 0


class LogStreamPlanner:
    """Remembers which streams exist; plans each poll's FilterLogEvents calls (see the module doc)."""

    def __init__(
        self,
        *,
        extra_calls_per_poll: int = 8,
        probes_per_poll: int = 2,
        first_probe_s: float = 5.0,
        max_probe_s: float = 60.0,
    ) -> None:
        self.extra_calls_per_poll = extra_calls_per_poll
        self.probes_per_poll = probes_per_poll
        self.first_probe_s = first_probe_s
        self.max_probe_s = max_probe_s
        self._confirmed: set[StreamId] = set()
        self._suspects: list[_Suspects] = []
        self._group_retry_at: dict[str, float] = {}

    @property
    def missing(self) -> int:
        return sum(len(s.streams) for s in self._suspects if s.delay_s > 0)

    async def read(self, wanted: Sequence[WantedStream], reader: Reader, now: float | None = None) -> ReadReport:
        """Every new event of ``wanted`` that can be read this poll, within the call budget."""
        now = time.monotonic() if now is None else now
        by_id = {stream.id: stream for stream in wanted}
        last_chance = [s.id for s in wanted if s.last_chance and s.id not in self._confirmed]
        # Taken out of any set under test: they are asked about on their own below.
        self._forget_all_but(set(by_id) - set(last_chance))
        queued = {stream_id for suspects in self._suspects for stream_id in suspects.streams}
        fresh = [s for s in by_id if s not in self._confirmed and s not in queued and s not in last_chance]
        for ids in _ids_by_group(fresh).values():
            for start in range(0, len(ids), LOG_STREAMS_PER_CALL):
                self._suspects.append(_Suspects(ids[start : start + LOG_STREAMS_PER_CALL], due=now, fresh=True))
        report = ReadReport()
        # Streams known to exist: one call per 100, streams with similar positions together.
        confirmed = sorted((by_id[s] for s in self._confirmed), key=lambda s: (s.group, s.start_ms))
        for group, streams in _by_group(confirmed).items():
            for start in range(0, len(streams), LOG_STREAMS_PER_CALL):
                chunk = streams[start : start + LOG_STREAMS_PER_CALL]
                try:
                    await self._call(reader, group, chunk, report)
                except (LogStreamMissing, LogGroupMissing) as gone:  # deleted since: find out again
                    ids = [s.id for s in chunk]
                    self._confirmed.difference_update(ids)
                    known = isinstance(gone, LogStreamMissing)
                    self._suspects.insert(0, _Suspects(ids, due=now, known_failing=known))
                    if not known:
                        self._group_retry_at[group] = now + self.first_probe_s
        await self._test_suspects(by_id, reader, report, now)
        for stream_id in last_chance:
            try:
                await self._call(reader, stream_id[0], [by_id[stream_id]], report)
            except (LogStreamMissing, LogGroupMissing):
                continue  # the job ended without ever writing to it
            self._confirmed.add(stream_id)
        report.missing = self.missing
        return report

    async def _call(self, reader: Reader, group: str, streams: list[WantedStream], report: ReadReport) -> None:
        report.calls += 1
        events = await reader(group, sorted({s.name for s in streams}), min(s.start_ms for s in streams))
        report.events += [(group, event) for event in events]

    def _forget_all_but(self, wanted: set[StreamId]) -> None:
        """Streams no longer watched leave every set; a set that shrank proves nothing any more."""
        self._confirmed &= wanted
        shrunk: set[int] = set()
        for suspects in self._suspects:
            kept = [s for s in suspects.streams if s in wanted]
            if len(kept) != len(suspects.streams):
                suspects.streams = kept
                suspects.known_failing = False  # the missing one may be among those that left
                shrunk.add(id(suspects))
        for suspects in self._suspects:
            if suspects.partner is not None and (id(suspects) in shrunk or id(suspects.partner) in shrunk):
                suspects.partner = None
        self._suspects = [s for s in self._suspects if s.streams]

    async def _test_suspects(
        self, by_id: dict[StreamId, WantedStream], reader: Reader, report: ReadReport, now: float
    ) -> None:
        budget = self.extra_calls_per_poll
        probes = self.probes_per_poll
        while True:
            due = [s for s in self._suspects if s.due <= now and self._group_retry_at.get(s.group, 0.0) <= now]
            known = next((s for s in due if s.known_failing), None)
            if known is not None:  # costs no call
                self._suspects.remove(known)
                self._halve(known, now)
                continue
            # New streams first (their first call is their share of one per 100), then the largest
            # halves (one call may confirm the most streams), then streams already found missing.
            fresh = [s for s in due if s.fresh]
            halves = [s for s in due if not s.fresh and s.delay_s == 0] if budget > 0 else []
            retries = [s for s in due if s.delay_s > 0] if budget > 0 and probes > 0 else []
            if fresh:
                suspects = fresh[0]
            elif halves:
                suspects = max(halves, key=lambda s: len(s.streams))
                budget -= 1
            elif retries:
                suspects = retries[0]
                budget -= 1
                probes -= 1
            else:
                return
            self._suspects.remove(suspects)
            try:
                await self._call(reader, suspects.group, [by_id[s] for s in suspects.streams], report)
            except LogGroupMissing:
                suspects.fresh = False
                self._suspects.insert(0, suspects)
                self._group_retry_at[suspects.group] = now + self.first_probe_s
                continue
            except LogStreamMissing:
                if len(suspects.streams) == 1:
                    self._still_missing(suspects, now)
                else:
                    self._halve(suspects, now)
                continue
            self._group_retry_at.pop(suspects.group, None)
            self._confirmed.update(suspects.streams)
            if suspects.partner is not None and suspects.partner in self._suspects:
                suspects.partner.known_failing = True  # the missing stream of their parent is there
                suspects.partner.partner = None

    def _halve(self, suspects: _Suspects, now: float) -> None:
        if len(suspects.streams) == 1:  # known to fail and alone: it is the missing one
            self._still_missing(suspects, now)
            return
        middle = len(suspects.streams) // 2
        first = _Suspects(suspects.streams[:middle], due=now)
        second = _Suspects(suspects.streams[middle:], due=now, partner=first)
        first.partner = second
        self._suspects[0:0] = [first, second]

    def _still_missing(self, suspects: _Suspects, now: float) -> None:
        delay = min(self.max_probe_s, max(self.first_probe_s, suspects.delay_s * 2))
        self._suspects.append(_Suspects(suspects.streams, due=now + delay, delay_s=delay))


def _by_group(streams: Sequence[WantedStream]) -> dict[str, list[WantedStream]]:
    grouped: dict[str, list[WantedStream]] = {}
    for stream in streams:
        grouped.setdefault(stream.group, []).append(stream)
    return grouped


def _ids_by_group(ids: Sequence[StreamId]) -> dict[str, list[StreamId]]:
    grouped: dict[str, list[StreamId]] = {}
    for stream_id in ids:
        grouped.setdefault(stream_id[0], []).append(stream_id)
    return grouped
