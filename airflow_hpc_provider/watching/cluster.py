"""Shared, batched status polling: every watched job on one cluster costs one script per interval.

Inside one process (a triggerer, or a worker watching without deferring) all watchers of one
Airflow connection share one :class:`ClusterPoller`: one SSH connection and, per interval, one
remote script that asks the scheduler about every job at once and reads the new output of the
running ones. Pollers are kept per (event loop, connection) and reference-counted: the last
watcher to leave closes the SSH connection.

Whether a job has ended is decided by the engine's absence rules (:mod:`.rules`), the same for
every source: a job never succeeds by absence, and a failed poll concludes nothing.

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
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects.base import Observation, SchedulerDialect
from airflow_hpc_provider.dialects.remote_shell import (
    LogPosition,
    LogRead,
    Record,
    parse_framed,
    random_token,
)
from airflow_hpc_provider.errors import ClusterAuthError, ClusterUnreachableError
from airflow_hpc_provider.hooks.cancel import cancel_jobs
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobStatus, LogChunk, WatchedJob
from airflow_hpc_provider.watching.cluster_tracks import Leaving, Subscriber, Track
from airflow_hpc_provider.watching.events import (
    JobEnded,
    Notice,
    WatchEvent,
    until_the_end,
)
from airflow_hpc_provider.watching.loop import Failure, LoopSettings, PollLoop
from airflow_hpc_provider.watching.pacing import next_status_due
from airflow_hpc_provider.watching.rules import AbsenceRules, settle
from airflow_hpc_provider.watching.sharing import SharedPollers

log = logging.getLogger(__name__)

REPLAY_MARKER = "--- replayed after a triggerer restart: the next {count} lines may appear twice ---"
REWRITTEN_MARKER = "--- {path} was rewritten from its start on the cluster: reading it again from there ---"


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
    # With no successful poll for this long, every watch fails (WatchFailed) and the poller stops;
    # None: keep trying (a cluster's login node comes back; an EC2 instance may not).
    give_up_after_s: float | None = None


def absence_rules(dialect: SchedulerDialect, settings: PollerSettings) -> AbsenceRules:
    """The rules (rules.py) for jobs of one dialect: Slurm, PBS, Grid Engine, tenants, EC2 runners."""
    return AbsenceRules(source=dialect.name, missing_grace_s=settings.missing_grace_s, gap_grace_s=settings.gap_grace_s)


class ClusterPoller:
    """Watches many jobs on one cluster through one SSH connection and one script per interval."""

    def __init__(self, transport: SshTransport, dialect: SchedulerDialect, settings: PollerSettings) -> None:
        self.transport = transport
        self.dialect = dialect
        self.settings = settings
        self.rules = absence_rules(dialect, settings)
        self._tracks: dict[str, Track] = {}
        self._leaving: dict[str, Leaving] = {}
        self._loop = PollLoop(
            self,
            LoopSettings(
                interval_s=settings.interval_s,
                max_backoff_s=settings.max_backoff_s,
                probe_every_s=settings.probe_every_s,
                give_up_after_s=settings.give_up_after_s,
            ),
        )
        self._last_notices: set[str] = set()
        self.polls = 0
        self.rounds = 0

    # -- watching ----------------------------------------------------------------------------------

    async def watch(self, job: WatchedJob) -> AsyncGenerator[WatchEvent, None]:
        """Events for one job until it ends (``JobEnded``) or cannot be watched (``WatchFailed``)."""
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        track = self._tracks.get(job.job_id)
        if track is None:
            track = self._tracks[job.job_id] = Track(job=job)
        subscriber = Subscriber(queue, handed=track.handed, written=track.handed)
        track.subscribers.append(subscriber)
        self._loop.ensure_running("hpc-cluster-poller")
        self._loop.wake.set()  # a new job is polled at once, not an interval later

        def leave() -> None:
            if subscriber in track.subscribers:
                track.subscribers.remove(subscriber)
            if not track.subscribers and self._tracks.get(job.job_id) is track:
                del self._tracks[job.job_id]
                self._remember_leaving(track, subscriber)

        async for event in until_the_end(queue, leave):
            yield event

    def _remember_leaving(self, track: Track, last: Subscriber) -> None:
        if track.offset is None or track.runs is None:
            return  # nothing was read: nothing to commit
        commit = last.written if last.written is not None and last.written > track.committed else None
        claim = track.final is not None and not track.claim_written
        if commit is not None or claim:
            self._leaving[track.job.job_id] = Leaving(
                track.job, commit, track.offset, track.generation, track.runs, claim
            )
            self._loop.acknowledged.set()

    def _acknowledger(self, track: Track, subscriber: Subscriber, through: int) -> Callable[[], None]:
        def acknowledge() -> None:
            if subscriber.written is None or subscriber.written < through:
                subscriber.written = through
            self._loop.acknowledged.set()

        return acknowledge

    async def confirm(self, job_id: str, timeout_s: float) -> bool:
        """Wait until what the job's watchers acknowledged is committed on the cluster (True), or
        ``timeout_s`` passed (False). Called before a watch ends with the job's outcome."""
        deadline = time.monotonic() + timeout_s
        async with self._loop.progress:
            while True:
                track = self._tracks.get(job_id)
                if track is None or (not track.commit_due and not track.claim_due):
                    return True
                self._loop.acknowledged.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._loop.progress.wait()

    async def cancel(self, job_ids: Sequence[str], *, claims: Sequence[str] = ()) -> None:
        """Cancel jobs over this poller's connection (see :func:`cancel_jobs`)."""
        await cancel_jobs(self.transport, self.dialect, job_ids, claims=claims)

    async def close(self) -> None:
        """Stop polling; commit what watchers acknowledged (even when cancelled), then disconnect."""
        await self._loop.stop()
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
            due = track.commit_due or track.claim_due
            if due and track.offset is not None and track.runs is not None:
                self._leaving[track.job.job_id] = Leaving(
                    track.job,
                    track.confirmed() if track.commit_due else None,
                    track.offset,
                    track.generation,
                    track.runs,
                    track.claim_due,
                )
        if not self._leaving or self._loop.failing:
            return
        try:
            async with asyncio.timeout(self.settings.final_commit_timeout_s):
                await self.transport.run(self._leaving_lines(), timeout_s=self.settings.final_commit_timeout_s)
            self._leaving.clear()
        except Exception as error:  # the next watcher replays the span instead: announced, not lost
            log.warning("could not commit the log cursors on %s: %s", self.transport.target.where, error)

    # -- what the loop asks (watching/loop.py) -----------------------------------------------------

    @property
    def name(self) -> str:
        return self.dialect.name

    @property
    def where(self) -> str:
        return self.transport.target.where

    def watching(self) -> bool:
        return bool(self._tracks)

    async def poll(self, *, with_status: bool) -> None:
        await self._round(with_status=with_status)

    def failure(self, error: Exception) -> Failure:
        if isinstance(error, ClusterAuthError):
            return Failure.FATAL
        if isinstance(error, ClusterUnreachableError):
            return Failure.OUTAGE
        return Failure.UNREADABLE

    def explain(self, error: Exception) -> str:
        return str(error)

    async def probe(self, *, timeout_s: float) -> bool | None:
        return await self.transport.probe(timeout_s=timeout_s)

    def work_waiting(self) -> bool:
        return self._reads_ready() or self._commits_waiting()

    def acknowledgements_pending(self) -> bool:
        return any(track.unconfirmed for track in self._tracks.values())

    def status_due(self, now: float, interval_s: float) -> float:
        running = (t.watched_since for t in self._tracks.values() if t.final is None and not t.ended)
        return next_status_due(now, interval_s, running)

    def tell_all(self, event: WatchEvent) -> None:
        for track in self._tracks.values():
            track.send(event)

    # -- what goes into the next script ------------------------------------------------------------

    def _commits_waiting(self) -> bool:
        return bool(self._leaving) or any(
            t.commit_due or (t.claim_due and not t.unconfirmed) for t in self._tracks.values()
        )

    def _reads_ready(self) -> bool:
        return any(track.read_ready for track in self._tracks.values())

    def _commit_lines(self, reads: Mapping[str, LogRead]) -> tuple[str, list[tuple[Track, int]]]:
        """Cursor records and claim markers for jobs the script does not read anyway."""
        lines: list[str] = []
        landed: list[tuple[Track, int]] = []
        for job_id, track in self._tracks.items():
            lines.append(track.claim_line())
            commit = None if job_id in reads else track.commit_line()
            if commit is not None:
                lines.append(commit[0])
                landed.append((track, commit[1]))
        return "".join(lines) + self._leaving_lines(), landed

    def _leaving_lines(self) -> str:
        return "".join(gone.lines() for gone in self._leaving.values())

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
            read = track.read(with_status=with_status, max_bytes=self.settings.max_chunk_bytes)
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
            if track.job.claimed_by_trigger or track.claim_due:
                track.claim_written = True
        for track, position in landed:
            track.commit_landed(position)
        for job_id in leaving:
            self._leaving.pop(job_id, None)
        framed = parse_framed(result.stdout, token)

        def take(resumed: bool) -> None:
            for job_id, read in reads.items():
                chunk = framed.chunks.get(job_id)
                if chunk is not None and (read.offset is None) == resumed:
                    self._take_chunk(tracks[job_id], read, chunk, framed.positions[job_id])

        # A first read says where a job stands (its cursor): taken before the status.
        take(resumed=True)
        if with_status:
            report = self.dialect.read_poll(framed.sections, job_ids)
            if report.failure is not None:
                take(resumed=False)
                raise ClusterUnreachableError(f"{self.dialect.name} status query failed: {report.failure}")
            for notice in self._fresh(report.notices):
                self.tell_all(Notice(notice))
            now = time.monotonic()
            for job_id, track in tracks.items():
                seen = report.observations.get(job_id, Observation(None, False))
                final = self._settle(track, seen, now)
                if final is not None and track.final is None:
                    track.final = final
        # The status came first in the script, so the chunks are at least as new as it is.
        take(resumed=False)
        if any(job_id not in framed.chunks for job_id in reads):
            # An answer cut short: what was read is kept, the rest is read again after a pause
            # (never at once: a login node that cuts answers off must not be asked again and again).
            raise ClusterUnreachableError(f"the answer from {self.transport.target.where} was cut short")
        self._loop.answered()  # whole: before any job's end goes out, watchers hear queries work again
        for job_id, track in tracks.items():
            if self._read_to_the_end(track, reads.get(job_id)):
                self._end(track)

    def _read_to_the_end(self, track: Track, read: LogRead | None) -> bool:
        """Whether an ended job's output has been read: to its last byte, or up to the drain limit."""
        if track.final is None or track.ended or read is None or read.whole_lines:
            return False
        return not track.more or track.drained_bytes > self.settings.max_drain_bytes

    def _take_chunk(self, track: Track, read: LogRead, chunk: LogChunk, position: LogPosition) -> None:
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
            for subscriber in track.subscribers:
                subscriber.handed = subscriber.written = 0
            track.send(Notice(REWRITTEN_MARKER.format(path=track.job.log_path)))
        elif read.offset is not None and (read.record is not Record.WITH_DATA or chunk.data):
            track.commit_landed(read.committed)
        # More than one chunk was waiting (the read stopped at its limit, not at the end of the file).
        track.more = chunk.size - chunk.offset > read.max_bytes
        if track.final is not None:
            track.drained_bytes += len(chunk.data)
        track.deliver_output(chunk.data, chunk.end, self._acknowledger)

    def _deliver_output(self, track: Track, data: bytes, end: int) -> None:
        track.deliver_output(data, end, self._acknowledger)

    def _end(self, track: Track) -> None:
        """The job ended and its output is read: the rest of a last line, then the outcome."""
        assert track.final is not None
        track.ended = True
        track.flush_partial(self._acknowledger)
        if track.drained_bytes > self.settings.max_drain_bytes:
            track.send(
                Notice(
                    f"output of job {track.job.job_id} is longer than the task log takes; "
                    f"the rest is in {track.job.log_path} on the cluster"
                )
            )
        track.send(JobEnded(track.final))

    def _fresh(self, notices: Sequence[str]) -> list[str]:
        """The notices the previous poll did not give: the same trouble poll after poll (slurmdbd
        down, say) reaches the task logs once, and again only once it changes."""
        fresh = [notice for notice in notices if notice not in self._last_notices]
        self._last_notices = set(notices)
        return fresh

    def _settle(self, track: Track, seen: Observation, now: float) -> JobStatus | None:
        """Apply the absence rules (rules.py); return the final status once there is one."""
        verdict = settle(track.standing, seen, now, self.rules)
        for event in verdict.events:
            track.send(event)
        return verdict.final


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
