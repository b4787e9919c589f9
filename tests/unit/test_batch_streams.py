"""Which FilterLogEvents calls the stream planner makes, against a CloudWatch that fails as AWS does."""

from __future__ import annotations

import math
from typing import Any

from airflow_hpc_provider.errors import LogGroupMissing, LogStreamMissing
from airflow_hpc_provider.watching.batch_streams import LogStreamPlanner, WantedStream

GROUP = "/aws/batch/job"


class CloudWatch:
    """Streams that exist, each with events; a call naming a missing stream (or group) fails whole."""

    def __init__(self, streams: dict[str, list[int]], groups: tuple[str, ...] = (GROUP,)) -> None:
        self.streams = streams
        self.groups = set(groups)
        self.calls: list[list[str]] = []

    async def read(self, group: str, names: list[str], start: int) -> list[dict[str, Any]]:
        self.calls.append(names)
        if group not in self.groups:
            raise LogGroupMissing("The specified log group does not exist.")
        if any(name not in self.streams for name in names):
            raise LogStreamMissing("The specified log stream does not exist.")
        return [
            {"logStreamName": name, "timestamp": t, "eventId": f"{name}-{t}"}
            for name in names
            for t in self.streams[name]
            if t >= start
        ]


def wanted(names: list[str]) -> list[WantedStream]:
    return [WantedStream(GROUP, name, 0) for name in names]


def names(n: int) -> list[str]:
    return [f"def/default/{i:05d}" for i in range(n)]


async def test_existing_streams_cost_one_call_per_hundred() -> None:
    all_names = names(1000)
    cloud = CloudWatch({name: [1] for name in all_names})
    planner = LogStreamPlanner()
    first = await planner.read(wanted(all_names), cloud.read, now=0)
    assert first.calls == 10 and len(first.events) == 1000
    again = await planner.read(wanted(all_names), cloud.read, now=1)
    assert again.calls == 10


async def test_one_percent_missing_stays_within_a_small_constant_above_one_call_per_hundred() -> None:
    all_names = names(1000)
    missing = set(all_names[5::100])  # one missing stream in each block of a hundred
    cloud = CloudWatch({name: [1] for name in all_names if name not in missing})
    planner = LogStreamPlanner(extra_calls_per_poll=8, first_probe_s=5, max_probe_s=60)
    delivered: set[str] = set()
    per_poll = []
    for poll in range(40):
        report = await planner.read(wanted(all_names), cloud.read, now=poll * 5.0)
        per_poll.append(report.calls)
        delivered |= {event["logStreamName"] for _, event in report.events}
    assert max(per_poll) <= math.ceil(1000 / 100) + 8, per_poll
    assert delivered == set(all_names) - missing  # every existing stream read, in the end
    steady = per_poll[-10:]
    # 990 existing streams: 10 calls; the 10 missing ones are retried alone, at most once a minute.
    assert sum(steady) / len(steady) <= 10 + 2, per_poll
    assert planner.missing == 10


async def test_a_missing_stream_is_found_once_it_exists_and_costs_nothing_while_it_waits() -> None:
    all_names = names(50)
    cloud = CloudWatch({name: [1] for name in all_names[1:]})
    planner = LogStreamPlanner(first_probe_s=5, max_probe_s=60)
    for moment in (0.0, 0.5):  # halving the set of 50 down to the missing one: under 2 polls
        await planner.read(wanted(all_names), cloud.read, now=moment)
    assert planner.missing == 1
    quiet = await planner.read(wanted(all_names), cloud.read, now=1)
    assert quiet.calls == 1  # the 49 existing streams; the missing one is not due yet
    cloud.streams[all_names[0]] = [7]
    found = await planner.read(wanted(all_names), cloud.read, now=5)
    assert {event["logStreamName"] for _, event in found.events} >= {all_names[0]}
    assert planner.missing == 0
    assert (await planner.read(wanted(all_names), cloud.read, now=6)).calls == 1


async def test_a_missing_log_group_is_retried_as_a_whole_not_stream_by_stream() -> None:
    all_names = names(300)
    cloud = CloudWatch({name: [1] for name in all_names}, groups=())
    planner = LogStreamPlanner(extra_calls_per_poll=8, first_probe_s=5)
    calls = [(await planner.read(wanted(all_names), cloud.read, now=t)).calls for t in (0, 1, 2)]
    assert calls == [1, 0, 0]  # one call learns the group is missing; nothing until it is due
    cloud.groups.add(GROUP)
    report = await planner.read(wanted(all_names), cloud.read, now=5)
    assert report.calls == 3 and len(report.events) == 300


async def test_streams_no_longer_watched_are_forgotten_and_prove_nothing() -> None:
    all_names = names(100)
    missing = all_names[0]
    cloud = CloudWatch({name: [1] for name in all_names[1:]})
    planner = LogStreamPlanner(extra_calls_per_poll=1, first_probe_s=5)
    await planner.read(wanted(all_names), cloud.read, now=0)  # the set of 100 fails: halves queued
    tested = len(cloud.calls)
    delivered: set[str] = set()
    for moment in (1, 2, 3, 4):  # the missing one's job ended: it is no longer wanted
        report = await planner.read(wanted(all_names[1:]), cloud.read, now=moment)
        delivered |= {event["logStreamName"] for _, event in report.events}
    assert planner.missing == 0 and delivered == set(all_names[1:])
    assert missing not in {name for call in cloud.calls[tested:] for name in call}


async def test_the_stream_of_a_job_that_ended_is_read_in_that_poll_whatever_its_retry_schedule() -> None:
    name = "def/default/late"
    cloud = CloudWatch({})
    planner = LogStreamPlanner(extra_calls_per_poll=0, first_probe_s=30, max_probe_s=60)
    # Seen RUNNING before its container wrote a line: found missing, next probe far away.
    await planner.read(wanted([name]), cloud.read, now=0)
    assert planner.missing == 1
    cloud.streams[name] = [1, 2, 3]  # the job wrote its lines and ended
    before_due = await planner.read(wanted([name]), cloud.read, now=1)
    assert before_due.events == []  # still waiting for its probe while the job runs
    ended = [WantedStream(GROUP, name, 0, last_chance=True)]
    final = await planner.read(ended, cloud.read, now=2)
    assert [event["timestamp"] for _, event in final.events] == [1, 2, 3]


async def test_a_job_that_ended_without_a_stream_costs_one_call_and_reads_nothing() -> None:
    cloud = CloudWatch({})
    planner = LogStreamPlanner(extra_calls_per_poll=0)
    report = await planner.read([WantedStream(GROUP, "def/default/never", 0, last_chance=True)], cloud.read, now=0)
    assert report.events == [] and report.calls == 1
