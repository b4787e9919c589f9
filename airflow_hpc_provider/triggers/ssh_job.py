"""The shape every trigger of a job on an SSH-reached cluster shares; subclasses name the dialect.

Thin on purpose: all the watching is the shared poller's (one SSH connection and one script per
interval for every job of a cluster in the triggerer process).
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseHook

from airflow_hpc_provider.dialects.base import SchedulerDialect
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.jobs import WatchedJob
from airflow_hpc_provider.triggers.base import HpcTrigger
from airflow_hpc_provider.watching.ssh_watch import cancel_job, watch_job


class SshJobTrigger(HpcTrigger):
    """Streams a job's output and state changes into the task log; fires once when it ends.

    :param conn_id: the Airflow connection the job was submitted through.
    :param job_id: the scheduler's job id.
    :param log_path: the job's output file on the cluster (home-relative or absolute).
    :param cursor_path: where the read position survives a triggerer restart.
    :param poll_interval: seconds between status queries (shared by all jobs on the cluster).
    :param deadline: epoch seconds; past it the trigger fires ``timeout`` so the operator cancels.
    """

    fields: ClassVar[tuple[str, ...]] = ("conn_id", "job_id", "log_path", "cursor_path", "poll_interval", "deadline")

    def __init__(
        self,
        conn_id: str,
        job_id: str,
        log_path: str,
        cursor_path: str,
        poll_interval: float = 10.0,
        deadline: float | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.job_id = job_id
        self.log_path = log_path
        self.cursor_path = cursor_path
        self.poll_interval = poll_interval
        self.deadline = deadline

    def dialect(self) -> SchedulerDialect:
        raise NotImplementedError

    async def _target(self) -> SshTarget:
        return SshTarget.from_connection(await BaseHook.aget_connection(self.conn_id))

    def describe(self) -> str:
        return f"{self.dialect().name} job {self.job_id} on {self.conn_id}"

    async def follow(self) -> dict[str, Any]:
        job = WatchedJob(
            job_id=self.job_id, log_path=self.log_path, cursor_path=self.cursor_path, claimed_by_trigger=True
        )
        outcome = await watch_job(
            await self._target(), self.dialect(), job, self.log, interval_s=self.poll_interval, deadline=self.deadline
        )
        return {
            **outcome.to_dict(),
            "conn_id": self.conn_id,
            "log_path": self.log_path,
            "cursor_path": self.cursor_path,
            **self.event_extras(),
        }

    def event_extras(self) -> dict[str, Any]:
        """What the operator needs back in ``execute_complete`` besides the outcome."""
        return {}

    async def stop(self) -> None:
        # Claimed as it is cancelled: a job stopped on purpose is never adopted by a retry.
        await cancel_job(await self._target(), self.dialect(), self.job_id, cursor_path=self.cursor_path)
