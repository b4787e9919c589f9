"""Watch one AWS Batch job to its end through the shared Batch poller, logging as it goes.

The Batch counterpart of ``watch.py``: used by the trigger (in the triggerer) and by the operator
when it does not defer, so both log the same lines and end with the same :class:`WatchOutcome`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from airflow_hpc_provider.batch_logs import LogPosition, PositionStore
from airflow_hpc_provider.batch_poller import BatchPollerSettings, BatchTarget, LogProgress, shared_batch_poller
from airflow_hpc_provider.dialects import batch
from airflow_hpc_provider.poller import JobEnded, Notice, OutputLines, StatusChanged, WatchFailed
from airflow_hpc_provider.watch import WatchOutcome


async def watch_batch_job(
    target: BatchTarget,
    job_id: str,
    store: PositionStore,
    log: logging.Logger | Any,
    *,
    interval_s: float,
    deadline: float | None,
    include_children: bool = False,
) -> WatchOutcome:
    """Stream the job's state changes and CloudWatch lines into ``log`` until it ends or the deadline."""
    position = LogPosition.from_dict(await store.load())
    settings = BatchPollerSettings(interval_s=interval_s)
    save_failed = False
    async with shared_batch_poller(target, settings) as poller:
        events = poller.watch(job_id, include_children=include_children, position=position)
        try:
            while True:
                remaining = None if deadline is None else deadline - time.time()
                if remaining is not None and remaining <= 0:
                    return WatchOutcome("timeout", job_id, message="the task's time limit passed")
                try:
                    async with asyncio.timeout(remaining):
                        event = await anext(events)
                except TimeoutError:
                    return WatchOutcome("timeout", job_id, message="the task's time limit passed")
                if isinstance(event, OutputLines):
                    for line in event.lines:
                        log.info("%s", line)
                elif isinstance(event, LogProgress):
                    # Saved only after the lines above are logged, and shielded: a trigger
                    # cancelled for a triggerer restart still finishes recording where it stopped.
                    try:
                        await asyncio.shield(store.save(event.position))
                    except Exception as error:
                        if not save_failed:
                            save_failed = True
                            log.warning("could not save the log position (a restart may repeat lines): %s", error)
                elif isinstance(event, StatusChanged):
                    log.info("%s job %s: %s", batch.NAME, job_id, event.status.describe())
                elif isinstance(event, Notice):
                    log.warning("%s", event.message)
                elif isinstance(event, JobEnded):
                    return WatchOutcome("ended", job_id, status=event.status)
                elif isinstance(event, WatchFailed):
                    return WatchOutcome("error", job_id, message=event.message)
        finally:
            await events.aclose()


async def terminate_batch_job(target: BatchTarget, job_id: str, reason: str) -> None:
    def terminate() -> None:
        target.hook().terminate(job_id, reason)

    await asyncio.to_thread(terminate)
