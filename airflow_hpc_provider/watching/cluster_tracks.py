"""What the SSH cluster poller (:mod:`.cluster`) keeps about each watched job, and what it asks of it.

A :class:`Track` is one job: its watchers (:class:`Subscriber`, each with what it was handed and
what it confirmed written), where its log was read to, what is committed in its cursor on the
cluster, its status as the absence rules remember it (:mod:`.rules`), and the ending bookkeeping.
From that alone it answers what the next script must do for it: read its log (and how), commit a
confirmed position, write its claim marker. A :class:`Leaving` is a track whose last watcher left,
kept until its last commit reaches the cluster.

A track follows one file whatever runs of the job write into it: a requeued Slurm job marks each
new run in its output itself (``dialects.slurm.RUN_MARKER_LINES``), at the exact byte where the
run begins, so nothing here knows of runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from airflow_hpc_provider.dialects.remote_shell import (
    RECORDS_BEFORE_COMPACTION,
    LogRead,
    Record,
    cursor_record,
    quote,
)
from airflow_hpc_provider.jobs import JobState, JobStatus, WatchedJob, claim_marker
from airflow_hpc_provider.watching.events import OutputLines, WatchEvent
from airflow_hpc_provider.watching.rules import Standing

# Makes a watcher's acknowledgement of the lines handed to it up to a position.
Acknowledger = Callable[["Track", "Subscriber", int], Callable[[], None]]

# States in which a job may be writing output, so its log is read each poll.
WRITING = frozenset({JobState.RUNNING, JobState.COMPLETING, JobState.SUSPENDED})


@dataclass(eq=False)
class Subscriber:
    """One watcher of a job: what it was handed and what it confirmed written (byte positions)."""

    queue: asyncio.Queue[WatchEvent]
    handed: int | None = None
    written: int | None = None


@dataclass
class Track:
    job: WatchedJob
    subscribers: list[Subscriber] = field(default_factory=list)
    # Reading. ``offset`` None: not read yet by this poller, resume from the records on the cluster.
    offset: int | None = None
    partial: bytes = b""
    generation: int = 0
    # The RUNS field of the cursor records, carried as read (see LOG_READER): nothing uses it since
    # jobs mark their own runs; known after the first read.
    runs: int | None = None
    more: bool = False  # the last read stopped at max_chunk_bytes: more is waiting
    # Delivery: the COMMITTED of the newest record known to be on the cluster, and how many
    # records were appended since the cursor file was last compacted.
    committed: int = 0
    records: int = 0
    # Status: what the absence rules remember (see rules.py).
    standing: Standing = field(init=False)
    claim_written: bool = False
    # Ended: what is left is read (whole, not only complete lines), then JobEnded goes out.
    final: JobStatus | None = None
    drained_bytes: int = 0
    ended: bool = False  # JobEnded went out
    watched_since: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.standing = Standing(self.job.job_id)

    @property
    def last(self) -> JobStatus | None:
        """The status seen last (None before the first)."""
        return self.standing.last

    def send(self, event: WatchEvent) -> None:
        for subscriber in self.subscribers:
            subscriber.queue.put_nowait(event)

    @property
    def handed(self) -> int | None:
        """The position after the last complete line handed to the watchers."""
        return None if self.offset is None else self.offset - len(self.partial)

    @property
    def unconfirmed(self) -> bool:
        return any(s.handed is not None and (s.written is None or s.written < s.handed) for s in self.subscribers)

    def confirmed(self) -> int | None:
        """The position every watcher has confirmed written (None before the first read)."""
        positions = [s.written for s in self.subscribers if s.written is not None]
        if len(positions) != len(self.subscribers) or not positions:
            return None
        return min(positions)

    @property
    def writing(self) -> bool:
        return self.last is not None and self.last.state in WRITING

    # -- what the next script does for this job ----------------------------------------------------

    @property
    def commit_due(self) -> bool:
        confirmed = self.confirmed()
        return self.runs is not None and confirmed is not None and confirmed > self.committed

    @property
    def claim_due(self) -> bool:
        # A job whose end a watcher saw is claimed: its outcome was consumed, no later try adopts it.
        return self.final is not None and not self.claim_written

    @property
    def read_ready(self) -> bool:
        """A backlog, an ended job's rest, or a job just seen writing, to read now (once its last
        chunk is confirmed)."""
        return (
            (self.more or self.final is not None or (self.offset is None and self.writing))
            and not self.ended
            and not self.unconfirmed
            and bool(self.subscribers)
        )

    def read(self, *, with_status: bool, max_bytes: int) -> LogRead | None:
        """This job's log read in the next script, or None."""
        if not self.subscribers or self.unconfirmed or self.ended:
            return None  # an unconfirmed chunk is the most a watcher may leave in doubt: wait for it
        # A job is read once it was seen writing (or ended): a queued one costs the login node nothing
        # but its line in squeue. Its first read resumes from the cursor records on the cluster.
        if self.final is not None:
            whole = False
        elif self.more:
            whole = self.writing
        elif self.writing and (with_status or self.offset is None):
            whole = True  # each poll; and at once when a job is first seen writing
        else:
            return None
        record = Record.WITH_DATA
        confirmed = self.confirmed()
        commit = self.committed
        if confirmed is not None and confirmed > self.committed and self.offset is not None:
            commit, record = confirmed, Record.ALWAYS
        if self.records >= RECORDS_BEFORE_COMPACTION and self.offset is not None:
            record = Record.COMPACT
        return LogRead(
            job_id=self.job.job_id,
            log_path=self.job.log_path,
            cursor_path=self.job.cursor_path,
            offset=self.offset,
            max_bytes=max_bytes,
            whole_lines=whole,
            committed=commit,
            generation=self.generation,
            runs=self.runs or 1,
            record=record,
        )

    def claim_line(self) -> str:
        """The claim marker, when the script must write it ("" otherwise)."""
        if (self.job.claimed_by_trigger and not self.claim_written) or self.claim_due:
            return f": > {quote(claim_marker(self.job.cursor_path))}\n"
        return ""

    def commit_line(self) -> tuple[str, int] | None:
        """A cursor record of the confirmed position, for a job the script does not read anyway."""
        if not self.commit_due or self.offset is None or self.runs is None:
            return None
        confirmed = self.confirmed()
        assert confirmed is not None
        compact = self.records >= RECORDS_BEFORE_COMPACTION
        line = cursor_record(self.job.cursor_path, confirmed, self.offset, self.generation, self.runs, compact=compact)
        return line, confirmed

    # -- output ---------------------------------------------------------------------------

    def commit_landed(self, position: int) -> None:
        """A cursor record of ``position`` reached the cluster."""
        if position > self.committed:
            self.committed = position
        self.records = 0 if self.records >= RECORDS_BEFORE_COMPACTION else self.records + 1

    def deliver_output(self, data: bytes, end: int, acknowledger: Acknowledger) -> None:
        """Bytes read up to ``end``: the complete lines go to the watchers, the rest waits."""
        self.offset = end
        if not data:
            return
        text = self.partial + data
        cut = text.rfind(b"\n") + 1
        complete, self.partial = text[:cut], text[cut:]
        if complete:
            # One decode for the whole chunk: a newline never falls inside a UTF-8 sequence.
            self.hand_over(tuple(complete[:-1].decode(errors="replace").split("\n")), acknowledger)

    def hand_over(self, lines: tuple[str, ...], acknowledger: Acknowledger) -> None:
        through = self.handed
        assert through is not None
        for subscriber in self.subscribers:
            subscriber.handed = through
            subscriber.queue.put_nowait(OutputLines(lines, acknowledger(self, subscriber, through)))

    def flush_partial(self, acknowledger: Acknowledger) -> None:
        """Hand over an unfinished last line: its writer is done with it."""
        if self.partial:
            line = self.partial.decode(errors="replace")
            self.partial = b""
            self.hand_over((line,), acknowledger)


@dataclass
class Leaving:
    """A track whose last watcher left: what still has to reach its cursor (and claim marker)."""

    job: WatchedJob
    commit: int | None
    sent: int
    generation: int
    runs: int
    claim: bool

    def lines(self) -> str:
        claim = f": > {quote(claim_marker(self.job.cursor_path))}\n" if self.claim else ""
        if self.commit is None:
            return claim
        return claim + cursor_record(
            self.job.cursor_path, self.commit, self.sent, self.generation, self.runs, compact=False
        )
