"""Mapped task instances that defer together become one scheduler array, submitted from the triggerer.

Each mapped task instance defers to its own trigger without touching the cluster; the trigger asks
this process's :class:`ArrayCollector` for its group (everything the elements share: connection,
batch script, env, log directory; all but the command and its env values) to submit it. The
collector waits for the siblings Airflow says are coming (at most the group's window,
``array_window``: see :func:`due`), submitting whole chunks of the cluster's largest array (read
once) as soon as they fill. A scheduler plugs in with an :class:`ArraySubmitter`: how to read the
largest array, how to submit one chunk in one round trip (adopting what an earlier trigger of the
task instance submitted), how to cancel elements. Each trigger then watches its own element.

Restarts lose and duplicate nothing: a submitter records every element's id for its task instance
before it reports any, so a trigger that runs again (a restarted triggerer, a crashed one's
successor) has its element adopted instead of submitted anew; a trigger stopped while waiting
leaves nothing behind. A user who stops the task while its element's submission is in flight has
the element cancelled as soon as its id is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_hpc_provider.jobs import JobKey

log = logging.getLogger(__name__)

# A collector this long without an element is forgotten (see collector_for).
FORGET_AFTER_S = 3600.0

# Where Airflow cannot say how many instances a mapped task has, this long without a new one
# closes the collection window.
QUIET_S = 2.0


class ArrayGroup(Hashable, Protocol):
    """What the elements of one array share (a frozen dataclass per kind of scheduler)."""

    @property
    def conn_id(self) -> str: ...

    @property
    def digest(self) -> str:
        """Names the group where the scheduler shows it; never holds an env value."""
        ...

    @property
    def window_s(self) -> float:
        """The longest an element waits for its siblings (``array_window``)."""
        ...


@dataclass(frozen=True)
class ElementRequest:
    """One mapped task instance asking to run as an element of its group's array."""

    group: Any  # an ArrayGroup; Any so each submitter reads its own kind's fields
    key: JobKey
    command: str
    map_index: int
    # The element's own env (values differing from its siblings' travel apart from shared ones).
    env: tuple[tuple[str, str], ...]
    # The mapped task (dag, run, task) and how many instances it has: the window ends early once
    # every sibling is here.
    siblings: str
    expected: int


@dataclass(frozen=True)
class ElementSubmitted:
    """Where a task instance's element went: its job id and the array it belongs to."""

    job_id: str
    array_id: str
    adopted: bool
    state: str | None
    ended: bool
    index: int
    chunk: int
    chunks: int
    log_path: str
    cursor_path: str


class ArraySubmitter(Protocol):
    """One scheduler's arrays on one cluster or account."""

    @property
    def scheduler(self) -> str:
        """The scheduler's name in log lines ("Slurm")."""
        ...

    @property
    def where(self) -> str:
        """The cluster or account (the connection id): collectors and sizes are kept per place."""
        ...

    async def read_max_array_size(self) -> int:
        """The most elements one array may have; raises when the cluster cannot be asked."""
        ...

    async def submit_chunk(
        self, group: Any, requests: Sequence[ElementRequest], number: int, chunks: int
    ) -> list[ElementSubmitted]:
        """One round trip: adopt each element an earlier trigger of its task instance submitted,
        submit the rest as ONE array; answers in the order of ``requests``. Raises when the chunk
        failed: every trigger of it fails with the reason (a retry asks again, and adopts)."""
        ...

    async def cancel(self, elements: Sequence[ElementSubmitted]) -> None:
        """Cancel elements whose user stopped them while their submission was in flight."""
        ...


@dataclass(eq=False)
class Waiting:
    request: ElementRequest
    answer: asyncio.Future[ElementSubmitted]
    since: float = field(default_factory=time.monotonic)
    # A user stopped the task while its submission was in flight: cancel the element once known.
    stop_when_known: bool = False


class ArrayCollector:
    """The elements of one group waiting on one event loop, submitted as arrays (module docstring)."""

    def __init__(self, submitter: ArraySubmitter, group: ArrayGroup) -> None:
        self.submitter = submitter
        self.group = group
        self._waiting: list[Waiting] = []
        self._in_flight: list[Waiting] = []
        self._arrived = asyncio.Event()
        self._last_arrival = 0.0
        self._task: asyncio.Task[None] | None = None
        # Map indexes of each mapped task submitted here: the rest of its siblings are awaited.
        self._submitted: dict[str, set[int]] = {}
        self._last_active = time.monotonic()

    def idle_since(self, now: float) -> float:
        """Seconds since the collector last had an element, 0 while it has one."""
        if self._waiting or self._in_flight or (self._task is not None and not self._task.done()):
            self._last_active = now
        return now - self._last_active

    async def submit(self, request: ElementRequest) -> ElementSubmitted:
        waiting = Waiting(request, asyncio.get_running_loop().create_future())
        self._last_active = waiting.since
        self._waiting.append(waiting)
        self._last_arrival = time.monotonic()
        self._arrived.set()
        if self._task is None or self._task.done():
            name = f"{self.submitter.scheduler} array collector {self.group.digest}"
            self._task = asyncio.create_task(self._run(), name=name)
        try:
            return await asyncio.shield(waiting.answer)
        except asyncio.CancelledError:
            if waiting in self._waiting:  # not submitted yet: nothing is left behind
                self._waiting.remove(waiting)
            raise

    def stop(self, key: JobKey) -> bool:
        """A user stopped the task of ``key`` before its element's id was known. True when the
        element is gone for good (withdrawn, or cancelled once its submission returns)."""
        for waiting in self._waiting:
            if waiting.request.key == key:
                self._waiting.remove(waiting)
                waiting.answer.cancel()
                return True
        for waiting in self._in_flight:
            if waiting.request.key == key:
                waiting.stop_when_known = True
                return True
        return False

    # -- collecting --------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            size = await max_array_size(self.submitter)
        except Exception as error:  # the cluster cannot be asked: every waiting element hears why
            self._fail(self._waiting, error)
            self._waiting = []
            return
        while self._waiting:
            take = await self._collect(size)
            batch, self._waiting = self._waiting[:take], self._waiting[take:]
            chunks = [batch[start : start + size] for start in range(0, len(batch), size)]
            for number, chunk in enumerate(chunks, start=1):
                await self._submit_chunk(chunk, number, len(chunks))

    async def _collect(self, size: int) -> int:
        """Wait for siblings; return how many of the waiting to submit now (see :func:`due`)."""
        while self._waiting:
            take, wait_s = due(self._waiting, self._submitted, self._last_arrival, size, self.group.window_s)
            if take:
                return take
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=wait_s)
        return 0

    @staticmethod
    def _fail(elements: Sequence[Waiting], error: Exception) -> None:
        """Their triggers fail with ``error`` (the task fails; a retry asks again, and adopts)."""
        for waiting in elements:
            if not waiting.answer.done():
                waiting.answer.set_exception(error)

    # -- submitting --------------------------------------------------------------------------------

    async def _submit_chunk(self, chunk: list[Waiting], number: int, chunks: int) -> None:
        self._in_flight = chunk
        try:
            answers = await self.submitter.submit_chunk(
                self.group, [waiting.request for waiting in chunk], number, chunks
            )
        except BaseException as error:
            self._fail(chunk, error if isinstance(error, Exception) else RuntimeError(str(error)))
            if not isinstance(error, Exception):
                raise
            return
        finally:
            self._in_flight = []
        fresh = [answer for answer in answers if not answer.adopted]
        if fresh:
            log.info(
                "Submitted %s array %s on %s: %d element(s), chunk %d/%d",
                self.submitter.scheduler,
                fresh[0].array_id,
                self.submitter.where,
                len(fresh),
                number,
                chunks,
            )
        stopped: list[ElementSubmitted] = []
        for waiting, answer in zip(chunk, answers, strict=True):
            self._submitted.setdefault(waiting.request.siblings, set()).add(waiting.request.map_index)
            if waiting.stop_when_known:
                stopped.append(answer)
            if not waiting.answer.done():
                waiting.answer.set_result(answer)
        if stopped:
            await self.submitter.cancel(stopped)


def due(
    waiting: Sequence[Waiting],
    submitted: Mapping[str, set[int]],
    last_arrival: float,
    size: int,
    window_s: float,
    now: float | None = None,
) -> tuple[int, float]:
    """How many of the ``waiting`` elements go now, or else how long to wait for more.

    All of them once every sibling Airflow said is coming is waiting or was ``submitted`` (map
    indexes per mapped task), or once the first has waited ``window_s``; whole chunks of ``size``
    as soon as they are full (the rest waits for its siblings). Where Airflow could not say how many
    siblings come, :data:`QUIET_S` without an arrival closes the window too. Siblings reach the
    triggerer as worker slots free up, seconds apart with few slots, so a quiet gap alone would
    split them into many small arrays.
    """
    now = time.monotonic() if now is None else now
    count = len(waiting)
    waited = now - waiting[0].since
    if all_siblings_here(waiting, submitted) or waited >= window_s:
        return count, 0.0
    if count >= size:
        return count - count % size, 0.0
    left = window_s - waited
    if any(element.request.expected < 0 for element in waiting):
        quiet_left = last_arrival + QUIET_S - now
        if quiet_left <= 0:
            return count, 0.0
        left = min(left, quiet_left)
    return 0, left


def all_siblings_here(waiting: Sequence[Waiting], submitted: Mapping[str, set[int]]) -> bool:
    """Whether every instance of each waiting element's mapped task is waiting or was submitted."""
    here: dict[str, set[int]] = {}
    expected: dict[str, int] = {}
    for element in waiting:
        here.setdefault(element.request.siblings, set()).add(element.request.map_index)
        expected[element.request.siblings] = element.request.expected
    return all(
        len(indexes | submitted.get(siblings, set())) >= expected[siblings] >= 0 for siblings, indexes in here.items()
    )


# --- per process --------------------------------------------------------------------------------

_collectors: dict[tuple[int, str, str, ArrayGroup], ArrayCollector] = {}
_max_sizes: dict[tuple[int, str, str], int] = {}


def collector_for(submitter: ArraySubmitter, group: ArrayGroup, now: float | None = None) -> ArrayCollector:
    """This event loop's collector for ``group``, made on first use. Collectors idle for
    :data:`FORGET_AFTER_S` are dropped (a group per DAG run when a job name holds the run id, in a
    triggerer that runs for months); a late sibling then waits its window instead of knowing
    the others were submitted."""
    now = time.monotonic() if now is None else now
    for stale in [key for key, collector in _collectors.items() if collector.idle_since(now) > FORGET_AFTER_S]:
        del _collectors[stale]
    key = (id(asyncio.get_running_loop()), submitter.scheduler, submitter.where, group)
    collector = _collectors.get(key)
    if collector is None:
        collector = _collectors[key] = ArrayCollector(submitter, group)
    return collector


async def max_array_size(submitter: ArraySubmitter) -> int:
    """The cluster's largest array, asked once per event loop and place."""
    key = (id(asyncio.get_running_loop()), submitter.scheduler, submitter.where)
    if key not in _max_sizes:
        _max_sizes[key] = await submitter.read_max_array_size()
    return _max_sizes[key]


def env_items(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(name), str(value)) for name, value in env.items()))


# --- as a trigger stores it (each kind of group adds its own fields) ----------------------------------


def element_fields(request: ElementRequest) -> dict[str, Any]:
    """The request's own fields, JSON-plain (a trigger's kwargs, which Airflow stores encrypted)."""
    return {
        "task_digest": request.key.task_digest,
        "try_number": request.key.try_number,
        "command": request.command,
        "map_index": request.map_index,
        "env": [list(pair) for pair in request.env],
        "siblings": request.siblings,
        "expected": request.expected,
    }


def element_from_fields(group: Any, data: Mapping[str, Any]) -> ElementRequest:
    """The request :func:`element_fields` stored, in ``group``."""
    return ElementRequest(
        group=group,
        key=JobKey(task_digest=str(data["task_digest"]), try_number=int(data["try_number"])),
        command=str(data["command"]),
        map_index=int(data["map_index"]),
        env=tuple((str(name), str(value)) for name, value in data["env"]),
        siblings=str(data["siblings"]),
        expected=int(data["expected"]),
    )
