"""Watch one AWS Batch job to its end through the shared Batch poller, logging as it goes.

The Batch counterpart of ``ssh_watch.py``: used by the trigger (in the triggerer) and by the operator
when it does not defer, so both log the same lines and end with the same :class:`WatchOutcome`.

Delivered means written. The poller hands over a job's new CloudWatch lines in slices, each followed
by the read position that covers it. A slice is logged (yielding to the event loop every few tens of
milliseconds, so a large backlog never stalls the other triggers), then the watch waits until the
task log's writer has read those lines (:class:`~airflow_hpc_provider.watching.delivery.LogChannel`) and
only then saves the position. A triggerer killed at any moment therefore loses no line: its
successor resumes from a position whose lines are known to be in the task log. What it may repeat
is the slice that was handed over but not yet confirmed (at most ``lines_per_slice`` lines); the
first slice after such a resume is preceded by a line that says how many of the next lines may
appear twice. A line written to the task log repeats only when the triggerer dies between the
supervisor writing it and the position being saved: one XCom round trip through the supervisor per
slice (about 0.1 s on the test stack), so at a few lines per poll nearly every restart repeats
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from airflow_hpc_provider.dialects import batch
from airflow_hpc_provider.watching.batch import BatchPollerSettings, BatchTarget, LogProgress, shared_batch_poller
from airflow_hpc_provider.watching.batch_logs import PositionStore, SavedPosition
from airflow_hpc_provider.watching.consume import consume
from airflow_hpc_provider.watching.delivery import LogChannel
from airflow_hpc_provider.watching.events import (
    WatchOutcome,
)

# How long the event loop may be held by logging one slice before other tasks get a turn.
LOG_TURN_S = 0.02
# How long to wait for the task log's writer to read what was logged before giving up on saving.
WRITTEN_TIMEOUT_S = 30.0
REPLAY_MARK = "--- replayed after a triggerer restart: the next {count} lines may appear twice ---"


async def watch_batch_job(
    target: BatchTarget,
    job_id: str,
    store: PositionStore,
    log: logging.Logger | Any,
    *,
    interval_s: float,
    deadline: float | None,
    include_children: bool = False,
    claim: str | None = None,
    channel: LogChannel | None = None,
) -> WatchOutcome:
    """Stream the job's state changes and CloudWatch lines into ``log`` until it ends or the deadline.

    :param claim: tag the job as watched with this value (the job's owner watching from a trigger).
    :param channel: how logged lines reach the task log (default: this process's own).
    """
    saved = SavedPosition.from_record(await store.load())
    delivery = _Delivery(store, log, channel or LogChannel.of_this_process(), replay_pending=saved.resumed)
    if not saved.resumed:
        # Even before its first line, a restart must know a watch of this try began (and so mark
        # what it repeats).
        await delivery.save(saved.position.to_dict())
    settings = BatchPollerSettings(interval_s=interval_s)
    async with shared_batch_poller(target, settings) as poller:
        events = poller.watch(job_id, include_children=include_children, position=saved.position, claim=claim)
        try:
            outcome = await consume(
                events,
                job_id,
                log,
                what=f"{batch.NAME} job {job_id}",
                deadline=deadline,
                deliver=lambda event: delivery.hand_over(event.lines),
                other=delivery.commit_progress,
            )
        finally:
            await events.aclose()
    # The triggerer may be killed right after the outcome is recorded: the last lines go first.
    await delivery.wait_written()
    return outcome


class _Delivery:
    """Hands lines to the task log and commits the position once they are written there."""

    def __init__(self, store: PositionStore, log: logging.Logger | Any, channel: LogChannel, replay_pending: bool):
        self.store = store
        self.log = log
        self.channel = channel
        self.replay_pending = replay_pending
        self.save_failed = False
        self.unconfirmed_warned = False

    async def hand_over(self, lines: Sequence[str]) -> None:
        if self.replay_pending:
            # The first slice after a restart starts at the last committed position: whatever the
            # previous triggerer handed over after that commit is among these lines.
            self.replay_pending = False
            self.log.info("%s", REPLAY_MARK.format(count=len(lines)))
        turn_started = time.monotonic()
        for index, line in enumerate(lines):
            self.log.info("%s", line)
            if index % 32 == 31 and time.monotonic() - turn_started > LOG_TURN_S:
                await asyncio.sleep(0)
                turn_started = time.monotonic()

    async def wait_written(self) -> bool:
        written = await self.channel.wait_until_written(WRITTEN_TIMEOUT_S)
        if not written and not self.unconfirmed_warned:
            self.unconfirmed_warned = True
            self.log.warning(
                "the task log's writer did not confirm the lines logged so far within %.0fs; the log "
                "position is saved only once it does",
                WRITTEN_TIMEOUT_S,
            )
        return written

    async def commit_progress(self, event: Any) -> None:
        """A position that covers the lines handed over so far: saved once they are written."""
        if isinstance(event, LogProgress):
            await self.commit(event.position)

    async def commit(self, position: dict[str, Any]) -> None:
        if await self.wait_written():
            await self.save(position)

    async def save(self, position: dict[str, Any]) -> None:
        # Shielded: a trigger cancelled for a triggerer restart still finishes recording where it is.
        try:
            await asyncio.shield(self.store.save(SavedPosition.record(position)))
        except Exception as error:
            if not self.save_failed:
                self.save_failed = True
                self.log.warning("could not save the log position (a restart may repeat lines): %s", error)


async def terminate_batch_job(target: BatchTarget, job_id: str, reason: str) -> None:
    def terminate() -> None:
        target.hook().terminate(job_id, reason)

    await asyncio.to_thread(terminate)
