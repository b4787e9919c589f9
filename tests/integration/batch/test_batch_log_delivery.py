"""Delivered means written: the CloudWatch position is saved only once the task log has the lines.

The trigger's log lines reach the task log through a socket that the triggerer's supervisor reads
and writes to the file. :class:`SupervisorLink` is that link in miniature: a logging handler writes
each line to a Unix socket and a reader thread takes them into ``task_log`` only while ``reading``
is set, so a test decides when lines count as written, and can "kill" the supervisor with lines
still unread (lost, as in a SIGKILL). Also here: streams that do not exist yet, against moto.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import socket
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from airflow_hpc_provider.watching.batch import BatchPoller, BatchPollerSettings, BatchTarget
from airflow_hpc_provider.watching.batch_logs import MemoryPositionStore
from airflow_hpc_provider.watching.batch_watch import watch_batch_job
from airflow_hpc_provider.watching.delivery import LogChannel
from airflow_hpc_provider.watching.events import JobEnded, OutputLines, WatchOutcome
from tests.integration.batch.conftest import CONN_ID
from tests.integration.batch.moto_batch import HeldJobs, MotoAws
from tests.integration.batch.test_batch_watching import stream_of, submit

pytestmark = pytest.mark.asyncio
MARK = re.compile(r"^--- replayed after a triggerer restart: the next (\d+) lines may appear twice ---$")


class SupervisorLink(logging.Handler):
    """A log socket and the supervisor that reads it into the task log (while ``reading`` is set)."""

    def __init__(self, task_log: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.writer, self.reader = socket.socketpair()
        self.writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        self.task_log = task_log
        self.reading = threading.Event()
        self.sent = 0
        self.dead = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        self.writer.sendall((record.getMessage() + "\n").encode())
        self.sent += 1

    def channel(self) -> LogChannel:
        return LogChannel(self.writer.fileno())

    def logger(self) -> logging.Logger:
        logger = logging.getLogger(f"test.batch.delivery.{uuid.uuid4().hex}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(self)
        return logger

    def _read(self) -> None:
        pending = b""
        self.reader.settimeout(0.05)
        while not self.dead:
            if not self.reading.wait(0.05):
                continue
            try:
                data = self.reader.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            self.task_log.extend(line.decode() for line in lines)

    def kill(self) -> None:
        """The triggerer dies: whatever the supervisor has not read yet is gone."""
        self.dead = True
        self.thread.join()
        self.writer.close()
        self.reader.close()


class RecordingStore(MemoryPositionStore):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    async def save(self, position: dict[str, Any]) -> None:
        await super().save(position)
        self.records.append(position)


async def until(condition: Any, timeout_s: float = 30, what: str = "") -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)


def watch(job_id: str, store: MemoryPositionStore, link: SupervisorLink) -> asyncio.Task[WatchOutcome]:
    return asyncio.create_task(
        watch_batch_job(
            BatchTarget(CONN_ID),
            job_id,
            store,
            link.logger(),
            interval_s=0.3,
            deadline=None,
            claim="trigger",
            channel=link.channel(),
        )
    )


async def restart(task: asyncio.Task[WatchOutcome], link: SupervisorLink) -> None:
    task.cancel()  # what a triggerer restart does to a trigger (no on_kill)
    with pytest.raises(asyncio.CancelledError):
        await task
    link.kill()


def numbered(task_log: list[str]) -> Counter[int]:
    return Counter(int(line.split()[-1]) for line in task_log if line.startswith("numbered line "))


def duplicates_outside_marks(task_log: list[str]) -> list[str]:
    """Lines that appear again without a replay mark announcing them."""
    seen: set[str] = set()
    marked_left = 0
    unannounced = []
    for line in task_log:
        mark = MARK.match(line)
        if mark:
            marked_left = int(mark.group(1))
            continue
        if not line.startswith("numbered line "):
            continue
        if line in seen and marked_left == 0:
            unannounced.append(line)
        seen.add(line)
        marked_left = max(0, marked_left - 1)
    return unannounced


def put_numbered(aws: MotoAws, job_id: str, numbers: range, start_ms: int) -> None:
    aws.put_lines(stream_of(job_id), [(start_ms + n, f"numbered line {n}") for n in numbers])


async def test_the_position_is_saved_only_once_the_task_log_has_the_lines(aws: MotoAws, held_queue: str) -> None:
    job_id = submit(held_queue)
    start = int(time.time() * 1000)
    put_numbered(aws, job_id, range(1, 6), start)
    task_log: list[str] = []
    link = SupervisorLink(task_log)
    store = RecordingStore()
    running = watch(job_id, store, link)
    await until(lambda: link.sent >= 5 + 1)  # a state line, then the five lines
    await asyncio.sleep(1.5)  # several polls: nothing of the lines may be committed yet
    assert store.records == [{"streams": {}}]  # only "a watch of this try began"
    link.reading.set()
    await until(lambda: len(store.records) > 1)
    ((committed,),) = [list(record["streams"].values()) for record in store.records[1:]]
    assert committed["t"] == start + 5 and numbered(task_log) == Counter(range(1, 6))
    aws.held.finish(job_id, success=True, exit_code=0)
    assert (await asyncio.wait_for(running, 30)).kind == "ended"
    link.kill()


async def test_a_restart_repeats_only_what_was_not_written_and_marks_it(aws: MotoAws, held_queue: str) -> None:
    """Lines the dead supervisor never read come again; none is lost; nothing repeats unannounced."""
    job_id = submit(held_queue)
    start = int(time.time() * 1000)
    store = RecordingStore()
    task_log: list[str] = []
    first = SupervisorLink(task_log)
    first.reading.set()
    put_numbered(aws, job_id, range(1, 11), start)
    running = watch(job_id, store, first)
    await until(lambda: numbered(task_log) == Counter(range(1, 11)) and len(store.records) == 2)
    first.reading.clear()  # the supervisor stalls: lines 11-20 are handed over but stay unread
    put_numbered(aws, job_id, range(11, 21), start)
    await until(lambda: first.sent >= 1 + 20)
    await restart(running, first)  # SIGKILL: lines 11-20 never reach the task log
    put_numbered(aws, job_id, range(21, 26), start)  # written while no triggerer ran
    second = SupervisorLink(task_log)
    second.reading.set()
    running = watch(job_id, store, second)
    await until(lambda: set(numbered(task_log)) == set(range(1, 26)))
    aws.held.finish(job_id, success=True, exit_code=0)
    assert (await asyncio.wait_for(running, 30)).kind == "ended"
    second.kill()
    assert numbered(task_log) == Counter(range(1, 26))  # nothing lost, nothing twice
    marks = [int(m.group(1)) for line in task_log if (m := MARK.match(line))]
    assert marks == [15]  # lines 11-25: the first slice after the restart
    assert duplicates_outside_marks(task_log) == []


async def test_lines_written_but_not_yet_confirmed_repeat_only_inside_the_marked_slice(
    aws: MotoAws, held_queue: str
) -> None:
    """The worst moment: the supervisor read a slice, the triggerer died before it could commit."""
    job_id = submit(held_queue)
    start = int(time.time() * 1000)
    store = RecordingStore()
    task_log: list[str] = []

    class Unconfirmed(LogChannel):  # the supervisor reads, but the trigger dies before it sees that
        confirm = True

        def pending_bytes(self) -> int:
            return super().pending_bytes() if self.confirm else 1

    first = SupervisorLink(task_log)
    first.reading.set()
    channel = Unconfirmed(first.writer.fileno())
    put_numbered(aws, job_id, range(1, 1201), start)  # a backlog: slices of 500
    settings = BatchPollerSettings()
    saved_slices: list[int] = []

    async def save_counting(position: dict[str, Any]) -> None:
        await MemoryPositionStore.save(store, position)
        store.records.append(position)
        saved_slices.append(len(store.records))
        if len(saved_slices) == 2:  # the initial record and the first slice: then the trouble starts
            channel.confirm = False

    store.save = save_counting  # type: ignore[method-assign]
    running = asyncio.create_task(
        watch_batch_job(
            BatchTarget(CONN_ID), job_id, store, first.logger(), interval_s=0.3, deadline=None, channel=channel
        )
    )
    await until(lambda: len(numbered(task_log)) >= 2 * settings.lines_per_slice)
    await asyncio.sleep(0.5)
    await restart(running, first)
    assert len(store.records) == 2  # only the first slice was committed
    store.save = RecordingStore.save.__get__(store)  # type: ignore[method-assign]
    second = SupervisorLink(task_log)
    second.reading.set()
    running = watch(job_id, store, second)
    await until(lambda: set(numbered(task_log)) == set(range(1, 1201)) and numbered(task_log)[1200] >= 1)
    aws.held.finish(job_id, success=True, exit_code=0)
    assert (await asyncio.wait_for(running, 30)).kind == "ended"
    second.kill()
    seen = numbered(task_log)
    assert set(seen) == set(range(1, 1201))
    twice = sorted(n for n, count in seen.items() if count > 1)
    assert twice == list(range(501, 1001))  # the one slice handed over but not confirmed
    marks = [int(m.group(1)) for line in task_log if (m := MARK.match(line))]
    assert marks == [settings.lines_per_slice]
    assert duplicates_outside_marks(task_log) == []


async def test_a_log_stream_that_does_not_exist_yet_costs_a_few_calls_not_one_per_stream(
    aws: MotoAws, held_queue: str
) -> None:
    ids = [submit(held_queue) for _ in range(200)]
    missing = set(ids[7::100])  # 1 %: their containers have not written a line yet
    now = int(time.time() * 1000)
    for job_id in ids:
        if job_id not in missing:
            aws.put_lines(stream_of(job_id), [(now, f"hello from {job_id}")])
    settings = BatchPollerSettings(interval_s=0.5, max_missing_probe_s=2)
    poller = BatchPoller(BatchTarget(CONN_ID), settings)
    calls_per_poll: list[int] = []
    original = poller.poll_once

    async def counted() -> None:
        before = poller.log_calls
        await original()
        calls_per_poll.append(poller.log_calls - before)

    poller.poll_once = counted  # type: ignore[method-assign]
    lines: dict[str, list[str]] = {job_id: [] for job_id in ids}

    async def follow(job_id: str) -> None:
        async for event in poller.watch(job_id):
            if isinstance(event, OutputLines):
                lines[job_id] += event.lines
            elif isinstance(event, JobEnded):
                return

    followers = [asyncio.create_task(follow(job_id)) for job_id in ids]
    await until(lambda: all(lines[job_id] for job_id in ids if job_id not in missing), 120)
    polls_to_find = len(calls_per_poll)
    seen = len(calls_per_poll)
    await until(lambda: len(calls_per_poll) >= seen + 6, 60)
    steady = calls_per_poll[seen:]
    # Their first lines arrive: found again within the probe delay, at no extra cost per stream.
    for job_id in missing:
        aws.put_lines(stream_of(job_id), [(now, f"late hello from {job_id}")])
    await until(lambda: all(lines[job_id] for job_id in missing), 60)
    for job_id in ids:
        aws.held.finish(job_id, success=True, exit_code=0)
    await asyncio.wait_for(asyncio.gather(*followers), 60)
    await poller.close()
    print(f"\nFilterLogEvents per poll, 200 jobs, 2 streams missing: {calls_per_poll}")
    budget = math.ceil(200 / 100) + settings.extra_log_calls_per_poll
    assert max(calls_per_poll) <= budget, calls_per_poll
    assert max(steady) <= math.ceil(198 / 100) + 2, calls_per_poll  # 2 retries of missing ones at most
    assert polls_to_find <= 10, calls_per_poll
    assert all(lines[job_id] == [f"hello from {job_id}"] for job_id in ids if job_id not in missing)
    assert all(lines[job_id] == [f"late hello from {job_id}"] for job_id in missing)
    assert HeldJobs.job(ids[0]).status == "SUCCEEDED"
