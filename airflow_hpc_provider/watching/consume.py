"""The one loop that turns a source's events into task-log lines and one outcome, for every backend.

A consumer (a trigger in the triggerer, or an operator watching on the worker) reads the events
of one job: state changes and notices become log lines, output lines go to the backend's
delivery (which acknowledges or saves their position once they are written to the task log), and
the watch ends with one :class:`~airflow_hpc_provider.watching.events.WatchOutcome`: ended (with
the final status), error (the watch could not go on), or timeout (the task's deadline passed
first; the operator then stops the job).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from airflow_hpc_provider.watching.events import (
    JobEnded,
    Notice,
    Outcome,
    OutputLines,
    StatusChanged,
    WatchFailed,
    WatchOutcome,
)

TIME_LIMIT_PASSED = "the task's time limit passed"


async def consume(
    events: AsyncIterator[Any],
    job_id: str,
    log: logging.Logger | Any,
    *,
    what: str,
    deadline: float | None,
    deliver: Callable[[OutputLines], Awaitable[None]],
    before_the_end: Callable[[], Awaitable[Any]] | None = None,
    other: Callable[[Any], Awaitable[None]] | None = None,
) -> WatchOutcome:
    """Follow one job's ``events`` to its outcome.

    :param what: the job in log lines: ``Slurm job 1234``.
    :param deadline: epoch seconds; past it the outcome is ``timeout``.
    :param deliver: write output lines to the task log (and let their position be committed).
    :param before_the_end: awaited when the job ended, before the outcome leaves (a final commit).
    :param other: a backend's own events (Batch's log positions).
    """
    remaining = None if deadline is None else deadline - time.time()
    if remaining is not None and remaining <= 0:
        return WatchOutcome(Outcome.TIMEOUT, job_id, message=TIME_LIMIT_PASSED)
    limit = asyncio.timeout(remaining)
    try:
        async with limit:
            async for event in events:
                if isinstance(event, OutputLines):
                    await deliver(event)
                elif isinstance(event, StatusChanged):
                    log.info("%s: %s", what, event.status.describe())
                elif isinstance(event, Notice):
                    log.warning("%s", event.message)
                elif isinstance(event, JobEnded):
                    if before_the_end is not None:
                        await before_the_end()
                    return WatchOutcome(Outcome.ENDED, job_id, status=event.status)
                elif isinstance(event, WatchFailed):
                    return WatchOutcome(Outcome.ERROR, job_id, message=event.message)
                elif other is not None:
                    await other(event)
    except TimeoutError:
        if not limit.expired():
            raise
        return WatchOutcome(Outcome.TIMEOUT, job_id, message=TIME_LIMIT_PASSED)
    return WatchOutcome(Outcome.ERROR, job_id, message="the watch ended without an outcome")
