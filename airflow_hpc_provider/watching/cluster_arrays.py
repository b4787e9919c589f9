"""The arrays of schedulers reached over SSH (Slurm, PBS, Grid Engine): what their elements share,
how a trigger stores its request, the connection their submissions go over, and the one way a
submitter runs its dialect's scripts (:class:`ClusterArraySubmitter`).

The collecting itself is the engine's (:mod:`~airflow_hpc_provider.watching.arrays`); a scheduler's
submitter (:mod:`~airflow_hpc_provider.watching.slurm_arrays`, ``pbs_arrays``, ``sge_arrays``)
names its dialect's scripts and how to read their answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from airflow_hpc_provider.dialects.array_elements import ArrayElement
from airflow_hpc_provider.dialects.base import SchedulerDialect
from airflow_hpc_provider.hooks.cancel import cancel_jobs
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.hooks.submission import read_submission
from airflow_hpc_provider.watching.arrays import ElementRequest, ElementSubmitted, element_fields, element_from_fields
from airflow_hpc_provider.watching.cluster import PollerSettings, shared_poller

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterArrayGroup:
    """What the elements of one array on an SSH-reached cluster share: all but their commands."""

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
        """Names the group on the cluster (the array's comment or name). Env values stay out of
        it: a digest of a secret is still something of the secret on a command line."""
        names = (name for name, _ in self.shared_env)
        shared = (self.conn_id, self.head, self.job_name, self.log_dir, str(self.working_dir), str(self.throttle))
        identity = "\x1f".join((*shared, *names))
        return hashlib.sha256(identity.encode()).hexdigest()[:20]


@contextlib.asynccontextmanager
async def shared_connection(target: SshTarget, dialect: SchedulerDialect) -> AsyncIterator[SshTransport]:
    """The process's shared connection to the cluster (the poller's), for one round trip. The
    element triggers hold the poller from before they ask until their watch ends, so the
    submissions and the watching share one connection (see ClusterArrayElementTrigger)."""
    async with shared_poller(target, dialect, PollerSettings()) as poller:
        yield poller.transport


class ClusterArraySubmitter(ABC):
    """An SSH-reached scheduler's arrays (an engine :class:`~.arrays.ArraySubmitter`): each step is
    one script of its dialect over the process's shared connection to the cluster (the poller's,
    which the element triggers hold). A scheduler says which scripts and how to read them."""

    target: SshTarget
    scheduler: ClassVar[str]
    # The command that submits, in error messages ("sbatch"), and its answers that are refusals.
    submit_command: ClassVar[str]
    refusals: ClassVar[tuple[str, ...]]
    # The cluster setting that caps an array, the script that reads it, and the scheduler's own
    # default when it cannot be read (said in the triggerer's log).
    max_size_setting: ClassVar[str]
    max_size_script: ClassVar[str]
    default_max_size: ClassVar[int]

    @property
    def where(self) -> str:
        return self.target.conn_id

    @abstractmethod
    def dialect(self) -> SchedulerDialect:
        """The dialect of the element triggers' poller (so the submission shares its connection)."""

    @abstractmethod
    def parse_max_size(self, text: str) -> int | None:
        """What :attr:`max_size_script` printed; None when it printed no number."""

    @abstractmethod
    def submit_script(self, group: ClusterArrayGroup, elements: Sequence[ArrayElement]) -> str:
        """The one round trip that adopts or submits the chunk's ``elements``."""

    @abstractmethod
    def parse_submit(self, text: str, elements: Sequence[ArrayElement]) -> Mapping[int, Any]:
        """What :meth:`submit_script` printed, per element index (every element answered)."""

    @abstractmethod
    def answer(
        self, group: ClusterArrayGroup, element: ArrayElement, outcome: Any, number: int, chunks: int
    ) -> ElementSubmitted:
        """Where one element went, from its outcome in :meth:`parse_submit`."""

    async def read_max_array_size(self) -> int:
        async with shared_connection(self.target, self.dialect()) as transport:
            result = await transport.run(self.max_size_script)
        size = self.parse_max_size(result.text) if result.exit_status == 0 else None
        if size is None:
            log.warning(
                "could not read %s on %s (%s): arrays are cut at %s's default, %d",
                self.max_size_setting,
                self.target.where,
                (result.error_text or result.text).strip() or f"exit {result.exit_status}",
                self.scheduler,
                self.default_max_size,
            )
            size = self.default_max_size
        return size

    async def submit_chunk(
        self, group: ClusterArrayGroup, requests: Sequence[ElementRequest], number: int, chunks: int
    ) -> list[ElementSubmitted]:
        elements = [
            ArrayElement(index, request.key, request.command, request.map_index, dict(request.env))
            for index, request in enumerate(requests)
        ]
        script = self.submit_script(group, elements)
        async with shared_connection(self.target, self.dialect()) as transport:
            result = await transport.run(script)
        outcomes = read_submission(
            result,
            lambda text: self.parse_submit(text, elements),
            self.submit_command,
            self.target.where,
            self.refusals,
        )
        return [self.answer(group, element, outcomes[element.index], number, chunks) for element in elements]

    async def cancel(self, elements: Sequence[ElementSubmitted]) -> None:
        async with shared_connection(self.target, self.dialect()) as transport:
            await cancel_jobs(
                transport,
                self.dialect(),
                [element.job_id for element in elements],
                claims=[element.cursor_path for element in elements],
            )


# --- as a trigger stores it -------------------------------------------------------------------------


def request_to_dict(request: ElementRequest) -> dict[str, Any]:
    """The request as JSON-plain fields (a trigger's kwargs, which Airflow stores encrypted)."""
    group: ClusterArrayGroup = request.group
    return {
        "head": group.head,
        "job_name": group.job_name,
        "log_dir": group.log_dir,
        "shared_env": [list(pair) for pair in group.shared_env],
        "working_dir": group.working_dir,
        "throttle": group.throttle,
        "window_s": group.window_s,
        **element_fields(request),
    }


def request_from_dict(conn_id: str, data: Mapping[str, Any]) -> ElementRequest:
    group = ClusterArrayGroup(
        conn_id=conn_id,
        head=str(data["head"]),
        job_name=str(data["job_name"]),
        log_dir=str(data["log_dir"]),
        shared_env=tuple((str(name), str(value)) for name, value in data["shared_env"]),
        working_dir=None if data.get("working_dir") is None else str(data["working_dir"]),
        throttle=None if data.get("throttle") is None else int(data["throttle"]),
        window_s=float(data["window_s"]),
    )
    return element_from_fields(group, data)
