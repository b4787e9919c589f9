"""When the shared poller asks about a job: early for a new one, once per interval after that."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from airflow_hpc_provider.watching.events import JobEnded, WatchEvent
from tests.unit.test_poller_delivery import Cluster

pytestmark = pytest.mark.asyncio


async def test_a_job_that_ends_a_moment_after_it_is_watched_ends_seconds_later_not_an_interval_later(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path)
    cluster.state("1", "RUNNING")
    poller, _ = cluster.poller(interval_s=30.0)
    events = poller.watch(cluster.job("1"))
    try:
        first: WatchEvent = await asyncio.wait_for(anext(events), 10)  # the first poll has seen it run
        assert not isinstance(first, JobEnded)
        cluster.state("1", "COMPLETED")
        ended_at = time.monotonic()
        async with asyncio.timeout(10):  # early polls 1, 2, 4, 8 s after the watch began; the interval is 30 s
            while not isinstance(await anext(events), JobEnded):
                pass
        assert time.monotonic() - ended_at < 10
    finally:
        await events.aclose()
        await poller.close()


async def test_jobs_watched_longer_than_the_interval_cost_one_status_poll_per_interval(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    for job_id in ("1", "2", "3"):
        cluster.state(job_id, "RUNNING")
    poller, _ = cluster.poller(interval_s=1.5)
    watchers = [poller.watch(cluster.job(job_id)) for job_id in ("1", "2", "3")]
    try:
        for events in watchers:
            await asyncio.wait_for(anext(events), 10)
        await asyncio.sleep(2.0)  # past the early polls (1 s; 2 s is past the interval)
        before = poller.polls
        await asyncio.sleep(4.6)

        assert poller.polls - before <= 4  # 4.6 s / 1.5 s: at most 4 polls (3 whole intervals + one begun)
    finally:
        for events in watchers:
            await events.aclose()
        await poller.close()
