"""Mapped task instances that defer together become one Slurm job array, submitted from the triggerer.

Each mapped task instance defers to its own trigger without touching the cluster; the trigger asks
this process's :class:`ArrayCollector` for its group (same connection, batch script, env, log
directory: everything but the command and its env values) to submit it. The collector waits for
the siblings Airflow says are coming (at most the group's window, ``array_window``), submitting
whole chunks of ``MaxArraySize`` (read from the cluster once) as soon as they fill, each in one SSH
round trip over the process's shared connection to the cluster (the poller's). Each trigger then
watches its own element, ``<array>_<index>``.

Restarts lose and duplicate nothing: every element's id is written to its task instance's record
on the cluster before any id is printed, so a trigger that runs again (a restarted triggerer, a
crashed one's successor) has its element adopted by the same round trip instead of submitted
anew; a trigger stopped while waiting leaves nothing behind. A user who stops the task while its
element's submission is in flight has the element cancelled as soon as its id is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_hpc_provider.dialects import slurm, slurm_array
from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.hooks.cancel import cancel_jobs
from airflow_hpc_provider.hooks.refusals import SLURM_REFUSALS
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.hooks.submission import read_submission
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.watching.cluster import PollerSettings, shared_poller

log = logging.getLogger(__name__)

# A collector this long without an element is forgotten (see collector_for).
FORGET_AFTER_S = 3600.0

# Where Airflow cannot say how many instances a mapped task has, this long without a new one
# closes the collection window.
QUIET_S = 2.0


@dataclass(frozen=True)
class ArrayGroup:
    """What the elements of one array share: all but their commands."""

    conn_id: str
    head: str
    job_name: str
    log_dir: str
    # Values every element has under their names: a whole script by the user cannot take an
    # element's own values, so its tasks group by their env (a command takes each element's own).
    shared_env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    throttle: int | None = None
    # The longest an element waits for its siblings (``array_window``).
    window_s: float = 10.0

    @property
    def digest(self) -> str:
        """Names the group on the cluster (the array's comment). Env values stay out of it: a
        digest of a secret is still something of the secret on a command line."""
        names = (name for name, _ in self.shared_env)
        shared = (self.conn_id, self.head, self.job_name, self.log_dir, str(self.working_dir), str(self.throttle))
        identity = "\x1f".join((*shared, *names))
        return hashlib.sha256(identity.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class ElementRequest:
    """One mapped task instance asking to run as an element of its group's array."""

    group: ArrayGroup
    key: JobKey
    command: str
    map_index: int
    # The element's own env (values differing from its siblings' travel under carrier names).
    env: tuple[tuple[str, str], ...]
    # The mapped task (dag, run, task) and how many instances it has: the window ends early once
    # every sibling is here.
    siblings: str
    expected: int


@dataclass(frozen=True)
class ElementSubmitted:
    """Where a task instance's element went: its job id and the array it belongs to."""

    job_id: str
    adopted: bool
    state: str | None
    ended: bool
    index: int
    chunk: int
    chunks: int
    log_path: str
    cursor_path: str

    @property
    def array_id(self) -> str:
        return self.job_id.partition("_")[0]


@dataclass(eq=False)
class Waiting:
    request: ElementRequest
    answer: asyncio.Future[ElementSubmitted]
    since: float = field(default_factory=time.monotonic)
    # A user stopped the task while its submission was in flight: cancel the element once known.
    stop_when_known: bool = False


class ArrayCollector:
    """The elements of one group waiting on one event loop, submitted as arrays (module docstring)."""

    def __init__(self, target: SshTarget, group: ArrayGroup) -> None:
        self.target = target
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
            self._task = asyncio.create_task(self._run(), name=f"slurm array collector {self.group.digest}")
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
            size = await max_array_size(self.target)
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
        group = self.group
        elements = [
            slurm_array.ArrayElement(
                index,
                waiting.request.key,
                waiting.request.command,
                waiting.request.map_index,
                dict(waiting.request.env),
            )
            for index, waiting in enumerate(chunk)
        ]
        script = slurm_array.submit_script(
            slurm_array.array_script(group.head, elements),
            elements,
            job_name=group.job_name,
            group=group.digest,
            log_dir=group.log_dir,
            env=dict(group.shared_env),
            working_dir=group.working_dir,
            throttle=group.throttle,
        )
        self._in_flight = chunk
        try:
            outcomes = await _run_submission(self.target, script, [element.index for element in elements])
        except BaseException as error:
            self._fail(chunk, error if isinstance(error, Exception) else RuntimeError(str(error)))
            if not isinstance(error, Exception):
                raise
            return
        finally:
            self._in_flight = []
        fresh = [outcome for outcome in outcomes.values() if not outcome.adopted]
        if fresh:
            log.info(
                "Submitted Slurm array %s on %s: %d element(s), chunk %d/%d",
                fresh[0].job_id.partition("_")[0],
                group.conn_id,
                len(fresh),
                number,
                chunks,
            )
        stopped: list[tuple[str, str]] = []
        for waiting, element in zip(chunk, elements, strict=True):
            outcome = outcomes[element.index]
            self._submitted.setdefault(waiting.request.siblings, set()).add(waiting.request.map_index)
            cursor_path = slurm.cursor_path(group.log_dir, element.key, outcome.job_id)
            if waiting.stop_when_known:
                stopped.append((outcome.job_id, cursor_path))
            if waiting.answer.done():
                continue
            waiting.answer.set_result(
                ElementSubmitted(
                    job_id=outcome.job_id,
                    adopted=outcome.adopted,
                    state=outcome.state,
                    ended=outcome.ended,
                    index=element.index,
                    chunk=number,
                    chunks=chunks,
                    log_path=_log_path(group.log_dir, element.key, outcome),
                    cursor_path=cursor_path,
                )
            )
        if stopped:
            await _cancel(self.target, stopped)


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


def _log_path(log_dir: str, key: JobKey, outcome: slurm_array.ElementOutcome) -> str:
    # An adopted single job (an earlier try submitted with arrays off) keeps its own log's name.
    if "_" in outcome.job_id:
        return slurm_array.element_log_path(log_dir, outcome.job_id)
    return slurm.log_path(log_dir, key, outcome.job_id)


async def _run_submission(target: SshTarget, script: str, indexes: list[int]) -> dict[int, slurm_array.ElementOutcome]:
    async with _connection(target) as transport:
        result = await transport.run(script)
    return read_submission(
        result, lambda text: slurm_array.parse_submit_output(text, indexes), "sbatch", target.where, SLURM_REFUSALS
    )


async def _cancel(target: SshTarget, stopped: list[tuple[str, str]]) -> None:
    async with _connection(target) as transport:
        await cancel_jobs(
            transport, SlurmDialect(), [job_id for job_id, _ in stopped], claims=[path for _, path in stopped]
        )


@contextlib.asynccontextmanager
async def _connection(target: SshTarget) -> AsyncIterator[SshTransport]:
    """The process's shared connection to the cluster (the poller's), for one round trip. The
    element triggers hold the poller from before they ask until their watch ends, so the
    submissions and the watching share one connection (see SlurmArrayElementTrigger)."""
    async with shared_poller(target, SlurmDialect(), PollerSettings()) as poller:
        yield poller.transport


# --- per process --------------------------------------------------------------------------------

_collectors: dict[tuple[int, str, ArrayGroup], ArrayCollector] = {}
_max_sizes: dict[tuple[int, str], int] = {}


def collector_for(target: SshTarget, group: ArrayGroup, now: float | None = None) -> ArrayCollector:
    """This event loop's collector for ``group``, made on first use. Collectors idle for
    :data:`FORGET_AFTER_S` are dropped (a group per DAG run when a job name holds the run id, in a
    triggerer that runs for months); a late sibling then waits its window instead of knowing
    the others were submitted."""
    now = time.monotonic() if now is None else now
    for stale in [key for key, collector in _collectors.items() if collector.idle_since(now) > FORGET_AFTER_S]:
        del _collectors[stale]
    key = (id(asyncio.get_running_loop()), target.conn_id, group)
    collector = _collectors.get(key)
    if collector is None:
        collector = _collectors[key] = ArrayCollector(target, group)
    return collector


async def max_array_size(target: SshTarget) -> int:
    """The cluster's ``MaxArraySize``, asked once per event loop and connection."""
    key = (id(asyncio.get_running_loop()), target.conn_id)
    if key not in _max_sizes:
        async with _connection(target) as transport:
            result = await transport.run(slurm_array.MAX_ARRAY_SIZE_SCRIPT)
        size = slurm_array.parse_max_array_size(result.text) if result.exit_status == 0 else None
        if size is None:
            log.warning(
                "could not read MaxArraySize on %s (%s): arrays are cut at Slurm's default, %d",
                target.where,
                (result.error_text or result.text).strip() or f"exit {result.exit_status}",
                slurm_array.DEFAULT_MAX_ARRAY_SIZE,
            )
            size = slurm_array.DEFAULT_MAX_ARRAY_SIZE
        _max_sizes[key] = size
    return _max_sizes[key]


def env_items(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(name), str(value)) for name, value in env.items()))


# --- as a trigger stores it -------------------------------------------------------------------------


def request_to_dict(request: ElementRequest) -> dict[str, Any]:
    """The request as JSON-plain fields (a trigger's kwargs, which Airflow stores encrypted)."""
    group = request.group
    return {
        "head": group.head,
        "job_name": group.job_name,
        "log_dir": group.log_dir,
        "shared_env": [list(pair) for pair in group.shared_env],
        "env": [list(pair) for pair in request.env],
        "working_dir": group.working_dir,
        "throttle": group.throttle,
        "window_s": group.window_s,
        "task_digest": request.key.task_digest,
        "try_number": request.key.try_number,
        "command": request.command,
        "map_index": request.map_index,
        "siblings": request.siblings,
        "expected": request.expected,
    }


def request_from_dict(conn_id: str, data: Mapping[str, Any]) -> ElementRequest:
    group = ArrayGroup(
        conn_id=conn_id,
        head=str(data["head"]),
        job_name=str(data["job_name"]),
        log_dir=str(data["log_dir"]),
        shared_env=tuple((str(name), str(value)) for name, value in data["shared_env"]),
        working_dir=None if data.get("working_dir") is None else str(data["working_dir"]),
        throttle=None if data.get("throttle") is None else int(data["throttle"]),
        window_s=float(data["window_s"]),
    )
    return ElementRequest(
        group=group,
        key=JobKey(task_digest=str(data["task_digest"]), try_number=int(data["try_number"])),
        command=str(data["command"]),
        map_index=int(data["map_index"]),
        env=tuple((str(name), str(value)) for name, value in data["env"]),
        siblings=str(data["siblings"]),
        expected=int(data["expected"]),
    )
