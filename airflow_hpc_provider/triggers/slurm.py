"""The trigger a deferred ``SlurmSubmitOperator`` waits on: thin, everything real is in the poller."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.jobs import WatchedJob
from airflow_hpc_provider.watch import WatchOutcome, cancel_job, watch_job


class SlurmJobTrigger(BaseTrigger):
    """Streams a Slurm job's output and state changes into the task log; fires once when it ends.

    :param slurm_conn_id: the connection the job was submitted through.
    :param job_id: the Slurm job id.
    :param log_path: the job's output file on the cluster (home-relative or absolute).
    :param cursor_path: where the read position survives a triggerer restart.
    :param poll_interval: seconds between status queries (shared by all jobs on the cluster).
    :param deadline: epoch seconds; past it the trigger fires ``timeout`` so the operator cancels.
    """

    def __init__(
        self,
        slurm_conn_id: str,
        job_id: str,
        log_path: str,
        cursor_path: str,
        poll_interval: float = 10.0,
        deadline: float | None = None,
    ) -> None:
        super().__init__()
        self.slurm_conn_id = slurm_conn_id
        self.job_id = job_id
        self.log_path = log_path
        self.cursor_path = cursor_path
        self.poll_interval = poll_interval
        self.deadline = deadline
        self._ended = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "slurm_conn_id": self.slurm_conn_id,
                "job_id": self.job_id,
                "log_path": self.log_path,
                "cursor_path": self.cursor_path,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
            },
        )

    async def _target(self) -> SshTarget:
        return SshTarget.from_connection(await BaseHook.aget_connection(self.slurm_conn_id))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        target = await self._target()
        job = WatchedJob(job_id=self.job_id, log_path=self.log_path, cursor_path=self.cursor_path)
        outcome: WatchOutcome = await watch_job(
            target, SlurmDialect(), job, self.log, interval_s=self.poll_interval, deadline=self.deadline
        )
        self._ended = outcome.kind == "ended"
        yield TriggerEvent({**outcome.to_dict(), "slurm_conn_id": self.slurm_conn_id, "log_path": self.log_path})

    async def on_kill(self) -> None:
        """The user marked the task failed/success or cleared it: cancel the job on the cluster.

        Airflow calls this only on such a user action, never on a triggerer restart or when a
        trigger moves to another triggerer, so a restart cancels nothing.
        """
        if self._ended:
            return
        self.log.info("Cancelling Slurm job %s on %s (task stopped by a user)", self.job_id, self.slurm_conn_id)
        await cancel_job(await self._target(), SlurmDialect(), self.job_id)
        self.log.info("Cancelled Slurm job %s at %s", self.job_id, time.strftime("%H:%M:%S"))
