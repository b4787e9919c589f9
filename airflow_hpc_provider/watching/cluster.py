"""Shared, batched status polling: every watched job on one cluster costs one script per interval.

Inside one process (a triggerer, or a worker watching without deferring) all watchers of one
Airflow connection share one :class:`ClusterPoller`: one SSH connection and, per interval, one
remote script that asks the scheduler about every job at once and reads the new output of the
running ones. Pollers are kept per (event loop, connection) and reference-counted: the last
watcher to leave closes the SSH connection.

Rules that keep a job from "succeeding" by absence:

* a dialect says whether its observation is *final*; only a final observation ends a watch;
* a terminal state that accounting has not confirmed yet (Slurm's squeue -> sacct gap) waits,
  up to ``gap_grace_s``, then is taken as it stands, with a warning;
* a job nobody knows (not in the queue, not in accounting) is ``LOST`` after ``missing_grace_s``;
* PREEMPTED must be seen twice in a row: a requeued job passes through it on its way back to PENDING;
* when the status query itself fails, nothing is concluded from that poll.

Rules that keep every line of output (delivered means written):

* a chunk of output is handed to the watchers with a way to *acknowledge* it; a watcher
  acknowledges once its log handler has written the lines (see :mod:`delivery`);
* only acknowledged positions are committed to the job's cursor on the cluster, in one small
  script for all jobs soon after the acknowledgements, or inside the next script that goes anyway;
* a job's log is not read again while a chunk of it is unacknowledged, so what a watcher killed
  mid-way can have handed over but not confirmed is at most one chunk: a watcher that resumes
  from the cursor replays that span, announced by a marker line (see ``REPLAY_MARKER``);
* on a graceful stop (cancelled trigger, last watcher leaving) what was acknowledged is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from airflow_hpc_provider.dialects.base import Observation, SchedulerDialect
from airflow_hpc_provider.dialects.remote_shell import (
    RECORDS_BEFORE_COMPACTION,
    LogPosition,
    LogRead,
    Record,
    cursor_record,
    parse_framed,
    quote,
    random_token,
)
from airflow_hpc_provider.errors import ClusterAuthError, ClusterUnreachableError, RemoteCommandError
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobState, JobStatus, LogChunk, WatchedJob, claim_marker
from airflow_hpc_provider.watching.sharing import SharedPollers

log = logging.getLogger(__name__)

# States in which a job may be writing output, so its log is read each poll.
_WRITING = frozenset({JobState.RUNNING, JobState.COMPLETING, JobState.SUSPENDED})
# States in which a job runs its command (a new run of a requeued job has begun).
_RUNNING = frozenset({JobState.RUNNING, JobState.SUSPENDED})
_CONFIRM_TWICE = frozenset({JobState.PREEMPTED})
MIN_POLL_SPACING_S = 1.0
# Acknowledgements that arrive within this long go to the cluster in one script.
COMMIT_GATHER_S = 0.02
# A newly watched job is asked about again this long after it was first watched, doubling up to the
# interval: a short job ends seconds after it does, not a whole interval later. Status polls are
# shared, so a burst of newcomers costs a few extra polls in all, and jobs watched for longer than
# the interval cost one poll per interval as before.
FIRST_EARLY_POLL_S = 1.0

REPLAY_MARKER = "--- replayed after a triggerer restart: the next {count} lines may appear twice ---"
RUN_MARKER = "--- run {run} of job {job_id} (requeued) ---"
REWRITTEN_MARKER = "--- {path} was rewritten from its start on the cluster: reading it again from there ---"


# --- what watchers receive ------------------------------------------------------------------------


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


@dataclass(eq=False)
class _Subscriber:
    """One watcher of a job: what it was handed and what it confirmed written (byte positions)."""

    queue: asyncio.Queue[WatchEvent]
    handed: int | None = None
    written: int | None = None


@dataclass
class _Track:
    job: WatchedJob
    subscribers: list[_Subscriber] = field(default_factory=list)
    # Reading. ``offset`` None: not read yet by this poller, resume from the records on the cluster.
    offset: int | None = None
    partial: bytes = b""
    generation: int = 0
    runs: int | None = None  # runs announced in the task log (known after the first read)
    more: bool = False  # the last read stopped at max_chunk_bytes: more is waiting
    # Delivery: the COMMITTED of the newest record known to be on the cluster, and how many
    # records were appended since the cursor file was last compacted.
    committed: int = 0
    records: int = 0
    # Status.
    last: JobStatus | None = None
    missing_since: float | None = None
    unsettled_since: float | None = None
    pending_final: JobStatus | None = None
    warned_states: set[str] = field(default_factory=set)
    claim_written: bool = False
    # Requeue: the run that starts next, and where in the file its output begins once known.
    next_run: int | None = None
    boundary: int | None = None
    # Ended: what is left is read (whole, not only complete lines), then JobEnded goes out.
    final: JobStatus | None = None
    drained_bytes: int = 0
    ended: bool = False  # JobEnded went out
    watched_since: float = field(default_factory=time.monotonic)

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


@dataclass
class _Leaving:
    """A track whose last watcher left: what still has to reach its cursor (and claim marker)."""

    job: WatchedJob
    commit: int | None
    sent: int
    generation: int
    runs: int
    claim: bool


@dataclass(frozen=True)
class PollerSettings:
    interval_s: float = 10.0
    # A chunk is the most a watcher killed mid-way can have handed over unconfirmed: it bounds the
    # replay after a restart. A backlog is read chunk after chunk, as fast as watchers confirm them.
    max_chunk_bytes: int = 64 * 1024
    max_drain_bytes: int = 64 * 1024 * 1024
    gap_grace_s: float = 120.0
    missing_grace_s: float = 600.0
    # Backoff while the cluster cannot be reached: doubled per failure up to this cap, jittered.
    max_backoff_s: float = 15.0
    # While backing off, the login node's SSH port is probed this often (a banner read, no login),
    # so streaming resumes within seconds of the node coming back, not at the end of a long wait.
    probe_every_s: float = 2.0
    # A script that gives no answer in this long drops the connection (see SshTransport.run).
    command_timeout_s: float = 90.0
    # How long a graceful stop waits for its last commit.
    final_commit_timeout_s: float = 10.0


class ClusterPoller:
    """Watches many jobs on one cluster through one SSH connection and one script per interval."""

    def __init__(self, transport: SshTransport, dialect: SchedulerDialect, settings: PollerSettings) -> None:
        self.transport = transport
        self.dialect = dialect
        self.settings = settings
        self._tracks: dict[str, _Track] = {}
        self._leaving: dict[str, _Leaving] = {}
        self._wake = asyncio.Event()  # a newcomer: poll the scheduler soon
        self._confirmed = asyncio.Event()  # an acknowledgement: commit and read on soon
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._last_notices: set[str] = set()
        self._failing = False
        self.polls = 0
        self.rounds = 0

    # -- watching ----------------------------------------------------------------------------------

    async def watch(self, job: WatchedJob) -> AsyncGenerator[WatchEvent, None]:
        """Events for one job until it ends (``JobEnded``) or cannot be watched (``WatchFailed``)."""
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        track = self._tracks.get(job.job_id)
        if track is None:
            track = self._tracks[job.job_id] = _Track(job=job)
        subscriber = _Subscriber(queue, handed=track.handed, written=track.handed)
        track.subscribers.append(subscriber)
        self._ensure_running()
        self._wake.set()  # a new job is polled at once, not an interval later

        def leave() -> None:
            if subscriber in track.subscribers:
                track.subscribers.remove(subscriber)
            if not track.subscribers and self._tracks.get(job.job_id) is track:
                del self._tracks[job.job_id]
                self._remember_leaving(track, subscriber)

        async for event in until_the_end(queue, leave):
            yield event

    def _remember_leaving(self, track: _Track, last: _Subscriber) -> None:
        if track.offset is None or track.runs is None:
            return  # nothing was read: nothing to commit
        commit = last.written if last.written is not None and last.written > track.committed else None
        claim = track.final is not None and not track.claim_written
        if commit is not None or claim:
            self._leaving[track.job.job_id] = _Leaving(
                track.job, commit, track.offset, track.generation, track.runs, claim
            )
            self._confirmed.set()

    def _acknowledger(self, track: _Track, subscriber: _Subscriber, through: int) -> Callable[[], None]:
        def acknowledge() -> None:
            if subscriber.written is None or subscriber.written < through:
                subscriber.written = through
            self._confirmed.set()

        return acknowledge

    async def confirm(self, job_id: str, timeout_s: float) -> bool:
        """Wait until what the job's watchers acknowledged is committed on the cluster (True), or
        ``timeout_s`` passed (False). Called before a watch ends with the job's outcome."""
        deadline = time.monotonic() + timeout_s
        async with self._progress:
            while True:
                track = self._tracks.get(job_id)
                if track is None or (not self._commit_due(track) and not self._claim_due(track)):
                    return True
                self._confirmed.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._progress.wait()

    async def cancel(self, job_ids: Sequence[str], *, claims: Sequence[str] = ()) -> None:
        """Cancel jobs; ``claims`` are their cursor paths, marked first so no later try adopts a
        job cancelled on purpose (see :func:`~airflow_hpc_provider.jobs.claim_marker`)."""
        marks = "".join(f": > {quote(claim_marker(path))}\n" for path in claims)
        result = await self.transport.run(marks + self.dialect.cancel_script(job_ids))
        if result.exit_status != 0:
            raise RemoteCommandError(
                f"cancel of {self.dialect.name} job(s) {', '.join(job_ids)}",
                self.transport.target.where,
                result.exit_status,
                result.error_text or result.text,
            )

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hpc-cluster-poller")

    async def close(self) -> None:
        """Stop polling; commit what watchers acknowledged (even when cancelled), then disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        final = asyncio.ensure_future(self._final_commit())
        try:
            await asyncio.shield(final)
        except asyncio.CancelledError:
            # Cancelled again while committing: the commit finishes on its own, then the link closes.
            final.add_done_callback(lambda _: asyncio.ensure_future(self.transport.close()))
            raise
        await self.transport.close()

    async def _final_commit(self) -> None:
        for track in list(self._tracks.values()):
            due = self._commit_due(track) or self._claim_due(track)
            if due and track.offset is not None and track.runs is not None:
                self._leaving[track.job.job_id] = _Leaving(
                    track.job,
                    track.confirmed() if self._commit_due(track) else None,
                    track.offset,
                    track.generation,
                    track.runs,
                    self._claim_due(track),
                )
        if not self._leaving or self._failing:
            return
        try:
            async with asyncio.timeout(self.settings.final_commit_timeout_s):
                await self.transport.run(self._leaving_lines(), timeout_s=self.settings.final_commit_timeout_s)
            self._leaving.clear()
        except Exception as error:  # the next watcher replays the span instead: announced, not lost
            log.warning("could not commit the log cursors on %s: %s", self.transport.target.where, error)

    # -- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        next_status = time.monotonic()
        last_status = -MIN_POLL_SPACING_S
        while self._tracks:
            now = time.monotonic()
            with_status = now >= next_status or self._wake.is_set()
            if with_status or self._reads_ready() or self._commits_waiting():
                if with_status:
                    # Cleared before the poll, not after: a job that arrives while a poll is under
                    # way must wake the next one, not wait a whole interval for its first status.
                    self._wake.clear()
                    last_status = now
                    next_status = self._next_status(now)
                try:
                    if with_status:
                        await self.poll_once()
                    else:
                        await self._round(with_status=False)
                    if failures:
                        self._tell_all(Notice(f"{self.dialect.name} status queries work again"))
                    failures = 0
                    self._failing = False
                except ClusterAuthError as error:
                    for track in list(self._tracks.values()):
                        track.send(WatchFailed(str(error)))
                    return
                except ClusterUnreachableError as error:
                    failures += 1
                    self._failing = True
                    delay = self._backoff(failures)
                    self._tell_all(Notice(f"{error}; trying again in {delay:.0f}s (failure {failures})"))
                    await self._wait_out(delay)
                    next_status = time.monotonic()
                    continue
                except Exception as error:  # a bug or an answer we cannot read: keep watching, say so
                    log.exception("poll of %s failed", self.transport.target.where)
                    failures += 1
                    self._tell_all(Notice(f"polling {self.transport.target.where} failed: {error!r}"))
                    await asyncio.sleep(self._backoff(failures))
                    next_status = time.monotonic()
                    continue
                async with self._progress:
                    self._progress.notify_all()
            await self._wait_for_work(next_status, last_status)

    def _next_status(self, now: float) -> float:
        """An interval from now, or sooner: the next early poll of a job watched for less than that."""
        due = now + self.settings.interval_s
        for track in self._tracks.values():
            if track.final is not None or track.ended:
                continue
            step = FIRST_EARLY_POLL_S
            while step < self.settings.interval_s and track.watched_since + step <= now:
                step *= 2
            if step < self.settings.interval_s:
                due = min(due, track.watched_since + step)
        return due

    def _backoff(self, failures: int) -> float:
        # Exponential backoff with jitter, so a cluster coming back is not hit by every triggerer at
        # once; the jobs themselves are untouched and watched again after.
        delay = min(self.settings.max_backoff_s, self.settings.interval_s * 2.0 ** (failures - 1))
        return float(delay * random.uniform(0.8, 1.2))

    async def _wait_out(self, delay: float) -> None:
        """Sleep ``delay``, probing the login node meanwhile: once it answers after having been
        down, stop waiting. A node that answers the probe but still fails keeps the full backoff."""
        deadline = time.monotonic() + delay
        seen_down = False
        while (remaining := deadline - time.monotonic()) > 0:
            step = min(self.settings.probe_every_s, remaining)
            started = time.monotonic()
            answered = await self.transport.probe(timeout_s=step)
            if answered is None:  # this transport cannot probe: plain backoff
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                return
            if not answered:
                seen_down = True
            elif seen_down:
                return
            await asyncio.sleep(max(0.0, step - (time.monotonic() - started)))

    async def _wait_for_work(self, next_status: float, last_status: float) -> None:
        """Until the next status poll is due, a newcomer arrives, or acknowledgements want a commit
        or let a backlog be read on."""
        while self._tracks:
            if self._reads_ready() or self._commits_waiting():
                if any(track.unconfirmed for track in self._tracks.values()):
                    # Let the acknowledgements of one poll's chunks arrive together: one script.
                    await asyncio.sleep(COMMIT_GATHER_S)
                return
            if self._wake.is_set():
                # Woken early by newcomers: still leave a moment between polls, so a stream of
                # arriving triggers costs a poll a second at most, however fast they come.
                await asyncio.sleep(max(0.0, MIN_POLL_SPACING_S - (time.monotonic() - last_status)))
                return
            remaining = next_status - time.monotonic()
            if remaining <= 0:
                return
            self._confirmed.clear()  # nothing is due now: wait for the next acknowledgement
            waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._confirmed.wait())}
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    def _tell_all(self, event: WatchEvent) -> None:
        for track in self._tracks.values():
            track.send(event)

    # -- what goes into the next script ------------------------------------------------------------

    def _commit_due(self, track: _Track) -> bool:
        confirmed = track.confirmed()
        return track.runs is not None and confirmed is not None and confirmed > track.committed

    def _claim_due(self, track: _Track) -> bool:
        # A job whose end a watcher saw is claimed: its outcome was consumed, no later try adopts it.
        return track.final is not None and not track.claim_written

    def _commits_waiting(self) -> bool:
        return bool(self._leaving) or any(
            self._commit_due(t) or (self._claim_due(t) and not t.unconfirmed) for t in self._tracks.values()
        )

    def _reads_ready(self) -> bool:
        """A backlog, an ended job's rest, or a job just seen writing, to read now (for jobs whose
        last chunk is confirmed)."""
        return any(
            (t.more or t.final is not None or (t.offset is None and _writing(t)))
            and not t.ended
            and not t.unconfirmed
            and t.subscribers
            for t in self._tracks.values()
        )

    def _read_for(self, track: _Track, *, with_status: bool) -> LogRead | None:
        if not track.subscribers or track.unconfirmed or track.ended:
            return None  # an unconfirmed chunk is the most a watcher may leave in doubt: wait for it
        # A job is read once it was seen writing (or ended): a queued one costs the login node nothing
        # but its line in squeue. Its first read resumes from the cursor records on the cluster.
        writing = _writing(track)
        if track.final is not None:
            whole = False
        elif track.more:
            whole = writing
        elif writing and (with_status or track.offset is None):
            whole = True  # each poll; and at once when a job is first seen writing
        elif with_status and track.next_run is not None and track.boundary is None:
            whole = False  # between two runs: read the first run to its very end
        else:
            return None
        record = Record.WITH_DATA
        confirmed = track.confirmed()
        commit = track.committed
        if confirmed is not None and confirmed > track.committed and track.offset is not None:
            commit, record = confirmed, Record.ALWAYS
        if track.records >= RECORDS_BEFORE_COMPACTION and track.offset is not None:
            record = Record.COMPACT
        return LogRead(
            job_id=track.job.job_id,
            log_path=track.job.log_path,
            cursor_path=track.job.cursor_path,
            offset=track.offset,
            max_bytes=self.settings.max_chunk_bytes,
            whole_lines=whole,
            committed=commit,
            generation=track.generation,
            runs=track.runs or 1,
            record=record,
        )

    def _commit_lines(self, reads: Mapping[str, LogRead]) -> tuple[str, list[tuple[_Track, int]]]:
        """Cursor records and claim markers for jobs the script does not read anyway."""
        lines: list[str] = []
        landed: list[tuple[_Track, int]] = []
        for job_id, track in self._tracks.items():
            if (track.job.claimed_by_trigger and not track.claim_written) or self._claim_due(track):
                lines.append(f": > {quote(claim_marker(track.job.cursor_path))}\n")
            if job_id in reads or not self._commit_due(track) or track.offset is None or track.runs is None:
                continue
            confirmed = track.confirmed()
            assert confirmed is not None
            compact = track.records >= RECORDS_BEFORE_COMPACTION
            lines.append(
                cursor_record(
                    track.job.cursor_path, confirmed, track.offset, track.generation, track.runs, compact=compact
                )
            )
            landed.append((track, confirmed))
        return "".join(lines) + self._leaving_lines(), landed

    def _leaving_lines(self) -> str:
        lines = []
        for gone in self._leaving.values():
            if gone.claim:
                lines.append(f": > {quote(claim_marker(gone.job.cursor_path))}\n")
            if gone.commit is not None:
                lines.append(
                    cursor_record(
                        gone.job.cursor_path, gone.commit, gone.sent, gone.generation, gone.runs, compact=False
                    )
                )
        return "".join(lines)

    # -- one round trip ----------------------------------------------------------------------------

    async def poll_once(self) -> None:
        """One status poll with every read it takes (what the loop does each interval)."""
        await self._round(with_status=True)

    async def _round(self, *, with_status: bool) -> None:
        tracks = dict(self._tracks)
        if not tracks:
            return
        reads = {}
        for job_id, track in tracks.items():
            read = self._read_for(track, with_status=with_status)
            if read is not None:
                reads[job_id] = read
        commit_lines, landed = self._commit_lines(reads)
        leaving = list(self._leaving)
        job_ids = list(tracks) if with_status else []
        if not job_ids and not reads and not commit_lines:
            return
        token = random_token()
        script = commit_lines + self.dialect.poll_script(token, job_ids, list(reads.values()))
        result = await self.transport.run(script, timeout_s=self.settings.command_timeout_s)
        if result.exit_status != 0:
            # Killed, cut off, or no shell: nothing in it may count as done (a claim marker above all).
            detail = (result.error_text or result.text).strip()[-300:]
            raise ClusterUnreachableError(
                f"the poll script on {self.transport.target.where} ended with status {result.exit_status}: {detail!r}"
            )
        self.rounds += 1
        if with_status:
            self.polls += 1
        # The script ran to its end: its records and markers are written.
        for track in tracks.values():
            if track.job.claimed_by_trigger or self._claim_due(track):
                track.claim_written = True
        for track, position in landed:
            self._committed(track, position)
        for job_id in leaving:
            self._leaving.pop(job_id, None)
        framed = parse_framed(result.stdout, token)

        def take(resumed: bool) -> None:
            for job_id, read in reads.items():
                chunk = framed.chunks.get(job_id)
                if chunk is not None and (read.offset is None) == resumed:
                    self._take_chunk(tracks[job_id], read, chunk, framed.positions[job_id])

        # A first read says where a job stands (runs announced, cursor): taken before the status.
        take(resumed=True)
        if with_status:
            report = self.dialect.read_poll(framed.sections, job_ids)
            if report.failure is not None:
                take(resumed=False)
                raise ClusterUnreachableError(f"{self.dialect.name} status query failed: {report.failure}")
            for notice in self._fresh(report.notices):
                self._tell_all(Notice(notice))
            now = time.monotonic()
            for job_id, track in tracks.items():
                seen = report.observations.get(job_id, Observation(None, False))
                self._follow_runs(track, seen)
                final = self._settle(track, seen, now)
                if final is not None and track.final is None:
                    track.final = final
        # The status came first in the script, so the chunks are at least as new as it is: a run
        # seen starting in this poll may already have written into them (see _follow_runs).
        take(resumed=False)
        if any(job_id not in framed.chunks for job_id in reads):
            # An answer cut short: what was read is kept, the rest is read again after a pause
            # (never at once: a login node that cuts answers off must not be asked again and again).
            raise ClusterUnreachableError(f"the answer from {self.transport.target.where} was cut short")
        for job_id, track in tracks.items():
            if self._read_to_the_end(track, reads.get(job_id)):
                self._end(track)

    def _read_to_the_end(self, track: _Track, read: LogRead | None) -> bool:
        """Whether an ended job's output has been read: to its last byte, or up to the drain limit."""
        if track.final is None or track.ended or read is None or read.whole_lines:
            return False
        return not track.more or track.drained_bytes > self.settings.max_drain_bytes

    def _committed(self, track: _Track, position: int) -> None:
        if position > track.committed:
            track.committed = position
        track.records = 0 if track.records >= RECORDS_BEFORE_COMPACTION else track.records + 1

    def _take_chunk(self, track: _Track, read: LogRead, chunk: LogChunk, position: LogPosition) -> None:
        """Apply what the reader said of the cursor, then hand the chunk's lines over."""
        if read.offset is None:  # resumed from the records: they say where this job stands
            track.generation, track.runs = position.generation, position.runs
            track.committed = chunk.offset
            for subscriber in track.subscribers:
                subscriber.handed = subscriber.written = chunk.offset
            if position.sent > chunk.offset and chunk.data:
                span = chunk.data[: position.sent - chunk.offset]
                count = span.count(b"\n") + (0 if span.endswith(b"\n") else 1)
                track.send(Notice(REPLAY_MARKER.format(count=count)))
        if position.shrank:
            # Positions of the old contents mean nothing in the new: start over from zero.
            track.generation, track.partial, track.committed = position.generation, b"", 0
            track.boundary = None if track.boundary is None else 0
            for subscriber in track.subscribers:
                subscriber.handed = subscriber.written = 0
            track.send(Notice(REWRITTEN_MARKER.format(path=track.job.log_path)))
        elif read.offset is not None and (read.record is not Record.WITH_DATA or chunk.data):
            self._committed(track, read.committed)
        # More than one chunk was waiting (the read stopped at its limit, not at the end of the file).
        track.more = chunk.size - chunk.offset > read.max_bytes
        if track.final is not None:
            track.drained_bytes += len(chunk.data)
        if track.next_run is not None and track.boundary is not None and chunk.data and chunk.offset >= track.boundary:
            self._announce_run(track)
        self._deliver_output(track, chunk.data, chunk.end)
        if (
            track.next_run is not None
            and track.boundary is None
            and not read.whole_lines
            and not track.more
            and _between_runs(track)
        ):
            track.boundary = chunk.end  # the first run's output ends here; the next run's follows
            self._flush_partial(track)  # its last line, even unfinished, is the first run's

    def _deliver_output(self, track: _Track, data: bytes, end: int) -> None:
        track.offset = end
        if not data:
            return
        text = track.partial + data
        cut = text.rfind(b"\n") + 1
        complete, track.partial = text[:cut], text[cut:]
        if complete:
            # One decode for the whole chunk: a newline never falls inside a UTF-8 sequence.
            self._hand_over(track, tuple(complete[:-1].decode(errors="replace").split("\n")))

    def _hand_over(self, track: _Track, lines: tuple[str, ...]) -> None:
        through = track.handed
        assert through is not None
        for subscriber in track.subscribers:
            subscriber.handed = through
            subscriber.queue.put_nowait(OutputLines(lines, self._acknowledger(track, subscriber, through)))

    def _follow_runs(self, track: _Track, seen: Observation) -> None:
        """A restart count that grew means a new run (requeue, preemption): its lines follow the
        first run's in the same file, announced by a marker line."""
        if seen.restarts is None or track.runs is None:
            return
        run = seen.restarts + 1
        if run > (track.next_run or track.runs):
            track.next_run, track.boundary = run, None
        status = seen.status
        if track.next_run is None or status is None:
            return
        if track.boundary is None and (status.state in _RUNNING or status.state.is_terminal):
            # The new run started (or even ended) before a poll saw the job between its runs: its
            # output begins about here, and an unfinished line read so far is the first run's.
            track.boundary = track.offset
            self._flush_partial(track)
        if status.state in _RUNNING and track.boundary == track.offset:
            self._announce_run(track)

    def _announce_run(self, track: _Track) -> None:
        if track.next_run is None:
            return
        track.send(Notice(RUN_MARKER.format(run=track.next_run, job_id=track.job.job_id)))
        track.runs, track.next_run, track.boundary = track.next_run, None, None

    def _end(self, track: _Track) -> None:
        """The job ended and its output is read: the rest of a last line, then the outcome."""
        assert track.final is not None
        track.ended = True
        if track.next_run is not None:
            self._announce_run(track)
        self._flush_partial(track)
        if track.drained_bytes > self.settings.max_drain_bytes:
            track.send(
                Notice(
                    f"output of job {track.job.job_id} is longer than the task log takes; "
                    f"the rest is in {track.job.log_path} on the cluster"
                )
            )
        track.send(JobEnded(track.final))

    def _flush_partial(self, track: _Track) -> None:
        """Hand over an unfinished last line: its writer is done with it."""
        if track.partial:
            line = track.partial.decode(errors="replace")
            track.partial = b""
            self._hand_over(track, (line,))

    def _fresh(self, notices: Sequence[str]) -> list[str]:
        """The notices the previous poll did not give: the same trouble poll after poll (slurmdbd
        down, say) reaches the task logs once, and again only once it changes."""
        fresh = [notice for notice in notices if notice not in self._last_notices]
        self._last_notices = set(notices)
        return fresh

    def _settle(self, track: _Track, seen: Observation, now: float) -> JobStatus | None:
        """Apply the rules in the module docstring; return the final status once there is one."""
        status = seen.status
        if status is None:
            if track.missing_since is None:
                track.missing_since = now
            if now - track.missing_since >= self.settings.missing_grace_s:
                return JobStatus(
                    job_id=track.job.job_id,
                    state=JobState.LOST,
                    native_state="LOST",
                    reason=f"unknown to {self.dialect.name} for {now - track.missing_since:.0f}s",
                )
            return None
        track.missing_since = None
        if status.state is JobState.UNKNOWN and status.native_state not in track.warned_states:
            track.warned_states.add(status.native_state)
            track.send(
                Notice(
                    f"{self.dialect.name} reports state {status.native_state!r}, which this "
                    "provider does not know; still watching"
                )
            )
        if track.last is None or _shown(track.last) != _shown(status):
            track.send(StatusChanged(status))
        track.last = status
        if seen.final:
            if status.state in _CONFIRM_TWICE and track.pending_final != status:
                track.pending_final = status
                return None
            return status
        track.pending_final = None
        if status.state.is_terminal:
            # The queue says it ended but accounting has not caught up: wait, within reason.
            if track.unsettled_since is None:
                track.unsettled_since = now
            if now - track.unsettled_since >= self.settings.gap_grace_s:
                track.send(
                    Notice(
                        f"accounting never confirmed how job {status.job_id} ended; "
                        f"taking the queue's word: {status.native_state}"
                    )
                )
                return status
        else:
            track.unsettled_since = None
        return None


def _writing(track: _Track) -> bool:
    return track.last is not None and track.last.state in _WRITING


def _between_runs(track: _Track) -> bool:
    """Queued again, held, requeued: the first run stopped writing and the next has not begun."""
    state = None if track.last is None else track.last.state
    return state is not None and state not in _WRITING and not state.is_terminal


def _shown(status: JobStatus) -> tuple[str, str | None, str | None]:
    return (status.native_state, status.reason, status.nodes)


# --- sharing within a process ---------------------------------------------------------------------


_shared: SharedPollers[ClusterPoller] = SharedPollers()


@contextlib.asynccontextmanager
async def shared_poller(
    target: SshTarget, dialect: SchedulerDialect, settings: PollerSettings
) -> AsyncIterator[ClusterPoller]:
    """The process's poller for this connection and dialect on this event loop (see :mod:`sharing`).

    Keyed by the dialect too: Slurm jobs and tenants on one cluster are polled by different scripts.
    """
    key = (target.conn_id, dialect.name)
    async with _shared.use(key, lambda: ClusterPoller(SshTransport(target), dialect, settings), settings) as poller:
        yield poller
