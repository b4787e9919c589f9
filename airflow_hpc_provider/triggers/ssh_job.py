"""The shape every trigger of a job on an SSH-reached cluster shares; subclasses name the dialect.

Thin on purpose: all the watching is the shared poller's (one SSH connection and one script per
interval for every job of a cluster in the triggerer process).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_hpc_provider.dialects.base import SchedulerDialect
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.jobs import WatchedJob
from airflow_hpc_provider.watching.ssh_watch import Outcome, cancel_job, watch_job


class SshJobTrigger(BaseTrigger):
    """Streams a job's output and state changes into the task log; fires once when it ends.

    :param conn_id: the Airflow connection the job was submitted through.
    :param job_id: the scheduler's job id.
    :param log_path: the job's output file on the cluster (home-relative or absolute).
    :param cursor_path: where the read position survives a triggerer restart.
    :param poll_interval: seconds between status queries (shared by all jobs on the cluster).
    :param deadline: epoch seconds; past it the trigger fires ``timeout`` so the operator cancels.
    """

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
        self._ended = False

    def dialect(self) -> SchedulerDialect:
        raise NotImplementedError

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "job_id": self.job_id,
                "log_path": self.log_path,
                "cursor_path": self.cursor_path,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
            },
        )

    async def _target(self) -> SshTarget:
        return SshTarget.from_connection(await BaseHook.aget_connection(self.conn_id))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        job = WatchedJob(
            job_id=self.job_id, log_path=self.log_path, cursor_path=self.cursor_path, claimed_by_trigger=True
        )
        outcome = await watch_job(
            await self._target(), self.dialect(), job, self.log, interval_s=self.poll_interval, deadline=self.deadline
        )
        self._ended = outcome.kind is Outcome.ENDED
        yield TriggerEvent(
            {
                **outcome.to_dict(),
                "conn_id": self.conn_id,
                "log_path": self.log_path,
                "cursor_path": self.cursor_path,
                **self.event_extras(),
            }
        )

    def event_extras(self) -> dict[str, Any]:
        """What the operator needs back in ``execute_complete`` besides the outcome."""
        return {}

    async def on_kill(self) -> None:
        """The user marked the task failed/success or cleared it: cancel the job on the cluster.

        Airflow calls this only on such a user action, never on a triggerer restart or when a
        trigger moves to another triggerer, so a restart cancels nothing.
        """
        if self._ended:
            return
        name = self.dialect().name
        self.log.info("Cancelling %s job %s on %s (task stopped by a user)", name, self.job_id, self.conn_id)
        await cancel_job(await self._target(), self.dialect(), self.job_id, cursor_path=self.cursor_path)
        self.log.info("Cancelled %s job %s", name, self.job_id)
