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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from airflow_hpc_provider.dialects.remote_shell import LogRead, parse_framed, quote, random_token
from airflow_hpc_provider.errors import ClusterAuthError, ClusterUnreachableError, RemoteCommandError
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobState, JobStatus, WatchedJob, claim_marker
from airflow_hpc_provider.sharing import SharedPollers

log = logging.getLogger(__name__)

# States in which a job may be writing output, so its log is read each poll.
_WRITING = frozenset({JobState.RUNNING, JobState.COMPLETING, JobState.SUSPENDED})
_CONFIRM_TWICE = frozenset({JobState.PREEMPTED})
MIN_POLL_SPACING_S = 1.0


@dataclass(frozen=True)
class Observation:
    """What one poll says of one job. ``status`` None: the scheduler knows nothing of it."""

    status: JobStatus | None
    final: bool


@dataclass(frozen=True)
class PollReport:
    observations: Mapping[str, Observation]
    # Set when the status query itself failed: nothing may be concluded from this poll.
    failure: str | None = None
    notices: tuple[str, ...] = ()


class SchedulerDialect(Protocol):
    """What the poller needs of a batch system (see ``dialects/``)."""

    name: str

    def poll_script(self, token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str: ...

    def read_poll(self, sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str]) -> PollReport: ...

    def cancel_script(self, job_ids: Sequence[str]) -> str: ...


# --- what watchers receive ------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusChanged:
    status: JobStatus


@dataclass(frozen=True)
class OutputLines:
    lines: tuple[str, ...]


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


@dataclass
class _Track:
    job: WatchedJob
    queues: list[asyncio.Queue[WatchEvent]] = field(default_factory=list)
    offset: int | None = None  # None: resume from the cursor saved on the cluster
    partial: bytes = b""
    last: JobStatus | None = None
    missing_since: float | None = None
    unsettled_since: float | None = None
    pending_final: JobStatus | None = None
    warned_states: set[str] = field(default_factory=set)
    claim_written: bool = False

    def send(self, event: WatchEvent) -> None:
        for queue in self.queues:
            queue.put_nowait(event)


@dataclass(frozen=True)
class PollerSettings:
    interval_s: float = 10.0
    max_chunk_bytes: int = 256 * 1024
    max_drain_bytes: int = 64 * 1024 * 1024
    gap_grace_s: float = 120.0
    missing_grace_s: float = 600.0
    max_backoff_s: float = 60.0


class ClusterPoller:
    """Watches many jobs on one cluster through one SSH connection and one script per interval."""

    def __init__(self, transport: SshTransport, dialect: SchedulerDialect, settings: PollerSettings) -> None:
        self.transport = transport
        self.dialect = dialect
        self.settings = settings
        self._tracks: dict[str, _Track] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_notices: set[str] = set()
        self.polls = 0

    # -- watching ----------------------------------------------------------------------------------

    async def watch(self, job: WatchedJob) -> AsyncGenerator[WatchEvent, None]:
        """Events for one job until it ends (``JobEnded``) or cannot be watched (``WatchFailed``)."""
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        track = self._tracks.get(job.job_id)
        if track is None:
            track = self._tracks[job.job_id] = _Track(job=job)
        track.queues.append(queue)
        self._ensure_running()
        self._wake.set()  # a new job is polled at once, not an interval later

        def leave() -> None:
            if queue in track.queues:
                track.queues.remove(queue)
            if not track.queues and self._tracks.get(job.job_id) is track:
                del self._tracks[job.job_id]

        async for event in until_the_end(queue, leave):
            yield event

    async def cancel(self, job_ids: Sequence[str]) -> None:
        result = await self.transport.run(self.dialect.cancel_script(job_ids))
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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.transport.close()

    # -- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while self._tracks:
            delay = self.settings.interval_s
            started = time.monotonic()
            # Cleared before the poll, not after: a job that arrives while a poll is under way
            # must wake the next one, not wait a whole interval for its first status.
            self._wake.clear()
            try:
                await self.poll_once()
                if failures:
                    self._tell_all(Notice(f"{self.dialect.name} status queries work again"))
                failures = 0
            except ClusterAuthError as error:
                for track in list(self._tracks.values()):
                    track.send(WatchFailed(str(error)))
                return
            except ClusterUnreachableError as error:
                failures += 1
                # Exponential backoff with jitter, so a cluster coming back is not hit by every
                # triggerer at once; the jobs themselves are untouched and watched again after.
                delay = min(self.settings.max_backoff_s, self.settings.interval_s * 2 ** (failures - 1))
                delay *= random.uniform(0.8, 1.2)
                self._tell_all(Notice(f"{error}; trying again in {delay:.0f}s (failure {failures})"))
            except Exception as error:  # a bug or an answer we cannot read: keep watching, say so
                log.exception("poll of %s failed", self.transport.target.where)
                failures += 1
                self._tell_all(Notice(f"polling {self.transport.target.where} failed: {error!r}"))
            if failures:  # backing off: newcomers wait too, or they would hammer a sick cluster
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            # Woken early by newcomers: still leave a moment between polls, so a stream of
            # arriving triggers costs a poll a second at most, however fast they come.
            await asyncio.sleep(max(0.0, MIN_POLL_SPACING_S - (time.monotonic() - started)))

    def _tell_all(self, event: WatchEvent) -> None:
        for track in self._tracks.values():
            track.send(event)

    async def poll_once(self) -> None:
        tracks = dict(self._tracks)
        if not tracks:
            return
        job_ids = list(tracks)
        reads = [
            self._read_for(track, whole_lines=True)
            for track in tracks.values()
            if track.last is not None and track.last.state in _WRITING
        ]
        token = random_token()
        claims = [t for t in tracks.values() if t.job.claimed_by_trigger and not t.claim_written]
        # A shell redirect, no extra process or round trip: see WatchedJob.claimed_by_trigger.
        claim_lines = "".join(f": > {quote(claim_marker(t.job.cursor_path))}\n" for t in claims)
        result = await self.transport.run(claim_lines + self.dialect.poll_script(token, job_ids, reads))
        self.polls += 1
        for track in claims:
            track.claim_written = True
        framed = parse_framed(result.stdout, token)
        report = self.dialect.read_poll(framed.sections, job_ids)
        if report.failure is not None:
            raise ClusterUnreachableError(f"{self.dialect.name} status query failed: {report.failure}")
        for notice in self._fresh(report.notices):
            self._tell_all(Notice(notice))
        for job_id, chunk in framed.chunks.items():
            if job_id in tracks:
                self._deliver_output(tracks[job_id], chunk.data, chunk.end)
        ended: list[tuple[_Track, JobStatus]] = []
        now = time.monotonic()
        for job_id, track in tracks.items():
            final = self._settle(track, report.observations.get(job_id, Observation(None, False)), now)
            if final is not None:
                ended.append((track, final))
        if ended:
            await self._drain([track for track, _ in ended])
            for track, status in ended:
                if track.partial:
                    track.send(OutputLines((track.partial.decode(errors="replace"),)))
                    track.partial = b""
                track.send(JobEnded(status))

    def _fresh(self, notices: Sequence[str]) -> list[str]:
        """The notices the previous poll did not give: the same trouble poll after poll (slurmdbd
        down, say) reaches the task logs once, and again only once it changes."""
        fresh = [notice for notice in notices if notice not in self._last_notices]
        self._last_notices = set(notices)
        return fresh

    def _read_for(self, track: _Track, *, whole_lines: bool) -> LogRead:
        return LogRead(
            job_id=track.job.job_id,
            log_path=track.job.log_path,
            cursor_path=track.job.cursor_path,
            offset=track.offset,
            max_bytes=self.settings.max_chunk_bytes,
            whole_lines=whole_lines,
        )

    def _deliver_output(self, track: _Track, data: bytes, end: int) -> None:
        track.offset = end
        if not data:
            return
        text = track.partial + data
        *complete, track.partial = text.split(b"\n")
        if complete:
            track.send(OutputLines(tuple(line.decode(errors="replace") for line in complete)))

    async def _drain(self, tracks: list[_Track]) -> None:
        """Read what ended jobs wrote after the last read, all of them in one script per round."""
        budget = self.settings.max_drain_bytes
        remaining = list(tracks)
        while remaining and budget > 0:
            token = random_token()
            reads = [self._read_for(track, whole_lines=False) for track in remaining]
            script = self.dialect.poll_script(token, [], reads)
            result = await self.transport.run(script)
            chunks = parse_framed(result.stdout, token).chunks
            still: list[_Track] = []
            for track in remaining:
                chunk = chunks.get(track.job.job_id)
                if chunk is None:
                    continue
                self._deliver_output(track, chunk.data, chunk.end)
                budget -= len(chunk.data)
                if len(chunk.data) >= self.settings.max_chunk_bytes:
                    still.append(track)
            remaining = still
        for track in remaining:
            track.send(
                Notice(
                    f"output of job {track.job.job_id} is longer than the task log takes; "
                    f"the rest is in {track.job.log_path} on the cluster"
                )
            )

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
