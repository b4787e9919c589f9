"""The arrays engine (watching/arrays.py) as any scheduler sees it: a submitter that keeps its
arrays in memory stands in for the cluster, so these specify the collector alone: which elements
go together, in how many submissions, and what a stop or a failed submission does to the others.
Each scheduler's own submitter is tested against its real cluster (tests/integration/test_*_arrays.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.watching.arrays import ElementRequest, ElementSubmitted, collector_for
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup


@dataclass
class InMemoryArrays:
    """A scheduler whose arrays are lists: ``submissions`` holds each chunk's map indexes."""

    max_size: int = 6
    where: str = field(default_factory=lambda: f"memory-{uuid.uuid4().hex}")
    scheduler: str = "In-memory"
    fail_chunk: int | None = None
    hold: asyncio.Event | None = None
    submissions: list[list[int]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    in_flight: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_max_array_size(self) -> int:
        return self.max_size

    async def submit_chunk(
        self, group: Any, requests: Sequence[ElementRequest], number: int, chunks: int
    ) -> list[ElementSubmitted]:
        self.in_flight.set()
        if self.hold is not None:
            await self.hold.wait()
        if number == self.fail_chunk:
            raise RuntimeError(f"the scheduler refused chunk {number}")
        array = str(100 + len(self.submissions))
        self.submissions.append([request.map_index for request in requests])
        return [
            ElementSubmitted(f"{array}_{index}", array, False, None, False, index, number, chunks, "log", "cursor")
            for index, _ in enumerate(requests)
        ]

    async def cancel(self, elements: Sequence[ElementSubmitted]) -> None:
        self.cancelled += [element.job_id for element in elements]


GROUP = ClusterArrayGroup(conn_id="c", head="#!/bin/bash\n", job_name="j", log_dir="logs", window_s=1.0)


def request(map_index: int, expected: int) -> ElementRequest:
    return ElementRequest(
        group=GROUP,
        key=JobKey.for_task_instance("d", "t", "r", map_index, 1),
        command=f"echo {map_index}",
        map_index=map_index,
        env=(),
        siblings="d\x1fr\x1ft",
        expected=expected,
    )


async def test_twenty_siblings_go_as_four_arrays_of_at_most_six_each_element_answered_with_its_own_id() -> None:
    arrays = InMemoryArrays(max_size=6)
    collector = collector_for(arrays, GROUP)
    answers = await asyncio.wait_for(asyncio.gather(*(collector.submit(request(i, 20)) for i in range(20))), 10)
    assert [len(chunk) for chunk in arrays.submissions] == [6, 6, 6, 2]
    assert sorted(i for chunk in arrays.submissions for i in chunk) == list(range(20))
    assert len({answer.job_id for answer in answers}) == 20
    assert {(answer.chunk, answer.chunks) for answer in answers[:6]} == {(1, 4)}


async def test_a_refused_chunk_fails_only_its_own_elements_and_the_next_chunk_still_goes() -> None:
    arrays = InMemoryArrays(max_size=6, fail_chunk=2)
    collector = collector_for(arrays, GROUP)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(collector.submit(request(i, 12 + 3)) for i in range(15)), return_exceptions=True), 10
    )
    failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, RuntimeError)]
    assert failed == list(range(6, 12))
    assert "refused chunk 2" in str(outcomes[6])
    assert [len(chunk) for chunk in arrays.submissions] == [6, 3]


async def test_a_stop_while_waiting_withdraws_the_element_and_nothing_of_it_is_submitted() -> None:
    arrays = InMemoryArrays(max_size=6)
    collector = collector_for(arrays, GROUP)
    stays = [asyncio.create_task(collector.submit(request(i, 3))) for i in (0, 1)]
    await asyncio.sleep(0.1)  # both wait for the third sibling (the window is 1 s)
    assert collector.stop(request(1, 3).key)
    withdrawn = stays[1]
    with pytest.raises(asyncio.CancelledError):
        await withdrawn
    last = await asyncio.wait_for(collector.submit(request(2, 3)), 10)
    await asyncio.wait_for(stays[0], 10)
    assert sorted(i for chunk in arrays.submissions for i in chunk) == [0, 2]
    assert last.job_id.endswith("_1")
    assert arrays.cancelled == []


async def test_a_stop_while_the_submission_is_in_flight_cancels_that_element_once_its_id_is_known() -> None:
    arrays = InMemoryArrays(max_size=6, hold=asyncio.Event())
    collector = collector_for(arrays, GROUP)
    submits = [asyncio.create_task(collector.submit(request(i, 3))) for i in range(3)]
    await asyncio.wait_for(arrays.in_flight.wait(), 10)
    assert collector.stop(request(1, 3).key)
    assert arrays.hold is not None
    arrays.hold.set()
    answers = await asyncio.wait_for(asyncio.gather(*submits), 10)
    assert arrays.cancelled == [answers[1].job_id]
