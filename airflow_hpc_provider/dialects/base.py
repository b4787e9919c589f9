"""What a dialect hands the engine: one poll's observations, and the protocol every scheduler dialect
follows.

It lives below both the dialects and the engine (the pollers), so a dialect imports neither hooks
nor the engine, and imports without asyncssh or boto3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from airflow_hpc_provider.dialects.remote_shell import LogRead
from airflow_hpc_provider.jobs import JobStatus


@dataclass(frozen=True)
class Observation:
    """What one poll says of one job. ``status`` None: the scheduler knows nothing of it.

    ``final``: the dialect vouches that this is how the job ended (accounting has it); only a final
    observation ends a watch at once, absence alone never does (the poller's absence rules).
    """

    status: JobStatus | None
    final: bool


@dataclass(frozen=True)
class PollReport:
    """One poll's answer. ``failure`` set: the status query itself failed, nothing may be concluded
    from this poll. ``notices``: trouble worth telling every watcher (said once until it changes)."""

    observations: Mapping[str, Observation]
    failure: str | None = None
    notices: tuple[str, ...] = ()


class SchedulerDialect(Protocol):
    """What the engine's cluster-script source needs of a batch system: one POSIX shell script that
    asks about many jobs and reads their output, how to read its framed answer, and how to cancel."""

    name: str

    def poll_script(self, token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str: ...

    def read_poll(self, sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str]) -> PollReport: ...

    def cancel_script(self, job_ids: Sequence[str]) -> str: ...
