"""The one poll loop of the engine, under every source (SSH clusters, EC2 instances, AWS Batch).

A source (:class:`PollSource`) knows how to ask its system about every job it watches in one
round trip; the loop decides *when*: a status poll per interval (sooner for newly watched jobs,
:mod:`.pacing`), soon when a newcomer arrives (but not sooner than ``MIN_POLL_SPACING_S`` after
the last), rounds without a status query when the source has work waiting (output to read on,
positions to commit), and, when a poll fails, backoff with jitter, probing the system meanwhile
where the source can. The loop also says, once, that queries work again; a source whose polls keep failing
past ``give_up_after_s`` fails its watches (never ends them). A failed poll concludes nothing:
only a source's answered poll reaches the absence rules (:mod:`.rules`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from airflow_hpc_provider.watching.events import Notice, WatchEvent, WatchFailed
from airflow_hpc_provider.watching.pacing import MIN_POLL_SPACING_S, backoff

log = logging.getLogger(__name__)

# Acknowledgements that arrive within this long are gathered into one round.
GATHER_S = 0.02


class Failure(enum.Enum):
    """What a failed poll means for the watches."""

    FATAL = "fatal"
    """The watches cannot go on (credentials refused): each watcher gets ``WatchFailed``; jobs are left alone."""
    OUTAGE = "outage"
    """The system cannot be reached, or throttles: back off and ask again."""
    UNREADABLE = "unreadable"
    """An answer the source could not read, or a bug: logged with its traceback, backed off."""


class PollSource(Protocol):
    """What the loop needs of a source."""

    @property
    def name(self) -> str:
        """The system in notices: ``Slurm``, ``AWS Batch``."""

    @property
    def where(self) -> str:
        """The account or login node in notices and logs."""

    def watching(self) -> bool:
        """Whether any job is still watched (the loop ends when none is)."""

    async def poll(self, *, with_status: bool) -> None:
        """One round trip; without status, only the work waiting (reads, commits)."""

    def failure(self, error: Exception) -> Failure:
        """What an error raised by :meth:`poll` means."""

    def explain(self, error: Exception) -> str:
        """A failed poll in the task log's words."""

    async def probe(self, *, timeout_s: float) -> bool | None:
        """Whether the system answers at all (None: this source cannot tell)."""

    def work_waiting(self) -> bool:
        """Whether a round without a status query has something to do now."""

    def acknowledgements_pending(self) -> bool:
        """Whether watchers were handed lines they have not acknowledged yet."""

    def status_due(self, now: float, interval_s: float) -> float:
        """When the next status poll is due (early polls of newly watched jobs)."""

    def tell_all(self, event: WatchEvent) -> None:
        """Send an event to every watcher of every job."""


@dataclass(frozen=True)
class LoopSettings:
    interval_s: float
    max_backoff_s: float
    # While backing off, the system is probed this often, so polling resumes within seconds of it
    # coming back, not at the end of a long wait.
    probe_every_s: float = 2.0
    give_up_after_s: float | None = None


class PollLoop:
    """Runs one source's polls; see the module docstring."""

    def __init__(self, source: PollSource, settings: LoopSettings) -> None:
        self.source = source
        self.settings = settings
        self.wake = asyncio.Event()  # a newcomer: poll soon
        self.acknowledged = asyncio.Event()  # an acknowledgement: commit and read on soon
        self.progress = asyncio.Condition()  # notified after every successful round
        self.failing = False
        self._failures = 0
        self._last_status = -MIN_POLL_SPACING_S
        self._last_contact = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self, name: str) -> None:
        """Run the loop on the running event loop, unless it already runs there."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name=name)

    def kill(self) -> None:
        """Stop the loop at once, as a killed process would: no clean-up of any kind."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Stop the loop and wait until it has stopped."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def answered(self) -> None:
        """A source calls this as soon as its system answered, before acting on the answer: a
        watcher warned of an outage hears that queries work again before its job's end."""
        self._last_contact = time.monotonic()
        if self._failures:
            self.source.tell_all(Notice(f"{self.source.name} status queries work again"))
        self._failures = 0
        self.failing = False

    async def run(self) -> None:
        next_status = time.monotonic()
        self._last_contact = time.monotonic()
        while self.source.watching():
            now = time.monotonic()
            with_status = now >= next_status or self.wake.is_set()
            if with_status or self.source.work_waiting():
                if with_status:
                    # Cleared before the poll, not after: a job that arrives while a poll is under
                    # way must wake the next one, not wait a whole interval for its first status.
                    self.wake.clear()
                    self._last_status = now
                    next_status = self.source.status_due(now, self.settings.interval_s)
                try:
                    limit = asyncio.timeout(self._time_left())
                    async with limit:
                        await self.source.poll(with_status=with_status)
                    self.answered()
                except Exception as error:
                    if isinstance(error, TimeoutError) and limit.expired():
                        kind = Failure.OUTAGE
                    else:
                        kind = self.source.failure(error)
                    if not await self._failed(error, kind):
                        return
                    next_status = time.monotonic()
                    continue
                async with self.progress:
                    self.progress.notify_all()
            await self._wait_for_work(next_status)

    async def _failed(self, error: Exception, kind: Failure) -> bool:
        """Handle a failed poll; False when the watches end here."""
        if kind is Failure.FATAL:
            self.source.tell_all(WatchFailed(self.source.explain(error)))
            return False
        self._failures += 1
        self.failing = True
        if self._time_left() == 0.0:
            silent = time.monotonic() - self._last_contact
            self.source.tell_all(WatchFailed(f"{self.source.where} was unreachable for {silent:.0f}s"))
            return False
        delay = backoff(self._failures, self.settings.interval_s, self.settings.max_backoff_s)
        left = self._time_left()
        delay = delay if left is None else min(delay, left)
        if kind is Failure.UNREADABLE:
            log.error("poll of %s failed", self.source.where, exc_info=error)
            self.source.tell_all(Notice(f"polling {self.source.where} failed: {error!r}; trying again in {delay:.0f}s"))
        else:
            self.source.tell_all(
                Notice(f"{self.source.explain(error)}; trying again in {delay:.0f}s (failure {self._failures})")
            )
        await self._wait_out(delay)
        return True

    def _time_left(self) -> float | None:
        """Seconds until the watches give up for want of an answer (``give_up_after_s``), or None."""
        if self.settings.give_up_after_s is None:
            return None
        return max(0.0, self._last_contact + self.settings.give_up_after_s - time.monotonic())

    async def _wait_out(self, delay: float) -> None:
        """Sleep ``delay``, probing the system meanwhile: once it answers after having been down,
        stop waiting. A system that answers the probe but still fails keeps the full backoff."""
        deadline = time.monotonic() + delay
        seen_down = False
        while (remaining := deadline - time.monotonic()) > 0:
            step = min(self.settings.probe_every_s, remaining)
            started = time.monotonic()
            answered = await self.source.probe(timeout_s=step)
            if answered is None:  # this source cannot probe: plain backoff
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                return
            if not answered:
                seen_down = True
            elif seen_down:
                return
            await asyncio.sleep(max(0.0, step - (time.monotonic() - started)))

    async def _wait_for_work(self, next_status: float) -> None:
        """Until the next status poll is due, a newcomer arrives, or acknowledgements want a round."""
        while self.source.watching():
            if self.source.work_waiting():
                if self.source.acknowledgements_pending():
                    # Let the acknowledgements of one poll's chunks arrive together: one round.
                    await asyncio.sleep(GATHER_S)
                return
            if self.wake.is_set():
                # Woken early by newcomers: still leave a moment between polls, so a stream of
                # arriving watchers costs a poll a second at most, however fast they come.
                await asyncio.sleep(max(0.0, MIN_POLL_SPACING_S - (time.monotonic() - self._last_status)))
                return
            remaining = next_status - time.monotonic()
            if remaining <= 0:
                return
            self.acknowledged.clear()  # nothing is due now: wait for the next acknowledgement
            waiters = {asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(self.acknowledged.wait())}
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
