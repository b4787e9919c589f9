"""A poll that fails concludes nothing, for every source of the engine; only a source told to give
up (an EC2 instance that may never come back) ends its watches, as a failed watch, never as an end.

The sources here are fakes at the engine's seams (the SSH transport a cluster poller runs its
script over; the boto3 client a Batch poller calls): every poll fails, for far longer than the
grace after which a job nobody knows would be LOST.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from botocore.exceptions import ClientError

from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.errors import ClusterUnreachableError
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.jobs import WatchedJob
from airflow_hpc_provider.watching import batch, cluster
from airflow_hpc_provider.watching.events import JobEnded, Notice, WatchEvent, WatchFailed

OUTAGE_S = 1.5


class UnreachableLoginNode:
    """An SSH transport whose every script fails as a dropped connection would."""

    def __init__(self) -> None:
        self.target = SshTarget(conn_id="outage", host="login.invalid")
        self.scripts = 0

    async def run(self, script: str, *, timeout_s: float = 0.0) -> Any:
        self.scripts += 1
        raise ClusterUnreachableError("cannot reach login.invalid: connection refused")

    async def probe(self, *, timeout_s: float) -> bool | None:
        return None  # this fake cannot probe: plain backoff

    async def close(self) -> None:
        return None


class ThrottledBatch:
    """A Batch hook whose every call is throttled."""

    def __init__(self) -> None:
        self.calls = 0

    def client(self, service: str) -> ThrottledBatch:
        return self

    def describe_jobs(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "slow down"}}, "DescribeJobs")


async def events_within(stream: Any, seconds: float) -> list[WatchEvent]:
    events: list[WatchEvent] = []

    async def collect() -> None:
        async for event in stream:
            events.append(event)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), timeout=seconds)
    return events


def cluster_poller(transport: UnreachableLoginNode, **settings: Any) -> cluster.ClusterPoller:
    quick = cluster.PollerSettings(interval_s=0.05, max_backoff_s=0.1, missing_grace_s=0.01, gap_grace_s=0.01)
    return cluster.ClusterPoller(transport, SlurmDialect(), quick.__class__(**{**quick.__dict__, **settings}))  # type: ignore[arg-type]


async def test_an_unreachable_cluster_ends_no_watch_however_long_it_stays_down() -> None:
    transport = UnreachableLoginNode()
    poller = cluster_poller(transport)
    try:
        events = await events_within(poller.watch(WatchedJob("7", "7.log", "7.cursor")), OUTAGE_S)
    finally:
        await poller.close()
    assert transport.scripts >= 3  # the poller kept trying, with backoff
    assert events and all(isinstance(event, Notice) for event in events)
    assert "connection refused" in events[0].message  # type: ignore[union-attr]


async def test_a_cluster_poller_told_to_give_up_fails_the_watch_after_that_long_and_never_ends_the_job() -> None:
    transport = UnreachableLoginNode()
    poller = cluster_poller(transport, give_up_after_s=0.5)
    try:
        events = await events_within(poller.watch(WatchedJob("7", "7.log", "7.cursor")), OUTAGE_S * 2)
    finally:
        await poller.close()
    assert not any(isinstance(event, JobEnded) for event in events)
    failed = events[-1]
    assert isinstance(failed, WatchFailed) and "unreachable for" in failed.message


async def test_throttled_batch_calls_end_no_watch_however_long_they_last() -> None:
    hook = ThrottledBatch()
    settings = batch.BatchPollerSettings(interval_s=0.05, max_backoff_s=0.1, missing_grace_s=0.01)
    poller = batch.BatchPoller(batch.BatchTarget(aws_conn_id="outage", region_name="eu-west-1"), settings, hook)  # type: ignore[arg-type]
    try:
        events = await events_within(poller.watch("7"), OUTAGE_S)
    finally:
        await poller.close()
    assert hook.calls >= 3
    assert events and all(isinstance(event, Notice) for event in events)
