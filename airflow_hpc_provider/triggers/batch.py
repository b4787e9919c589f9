"""The trigger a deferred ``BatchRevisionOperator`` waits on: thin, the work is in the Batch poller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

import airflow_hpc_provider.aws_extra  # noqa: F401  (first: names the extra when it is missing)
from airflow_hpc_provider.dialects import batch
from airflow_hpc_provider.watching.batch import BatchTarget
from airflow_hpc_provider.watching.batch_logs import MemoryPositionStore, PositionStore, XComPositionStore
from airflow_hpc_provider.watching.batch_watch import terminate_batch_job, watch_batch_job
from airflow_hpc_provider.watching.ssh_watch import Outcome, WatchOutcome

CANCEL_REASON = "Stopped from Airflow: the task was marked failed, marked success or cleared"


class BatchJobTrigger(BaseTrigger):
    """Streams a Batch job's state changes and CloudWatch lines into the task log; fires once at the end.

    :param job_id: the Batch job id.
    :param aws_conn_id: the ``aws`` connection the job was submitted through.
    :param region_name: the job's region (default: the connection's).
    :param poll_interval: seconds between DescribeJobs rounds (shared by all jobs of the connection).
    :param deadline: epoch seconds; past it the trigger fires ``timeout`` so the operator terminates.
    :param terminate_on_kill: the task owns the job: tag it as watched when the watch starts, and
        terminate it when a user stops the task (off for watch-only use).
    :param include_children: also stream the logs of an array job's children.
    :param dag_id: with ``task_id``, ``run_id`` and ``map_index``: the task instance whose XCom keeps
        the log position across triggerer restarts.
    """

    def __init__(
        self,
        job_id: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        poll_interval: float = 10.0,
        deadline: float | None = None,
        terminate_on_kill: bool = True,
        include_children: bool = False,
        dag_id: str | None = None,
        task_id: str | None = None,
        run_id: str | None = None,
        map_index: int = -1,
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.terminate_on_kill = terminate_on_kill
        self.include_children = include_children
        self.dag_id = dag_id
        self.task_id = task_id
        self.run_id = run_id
        self.map_index = map_index
        self._ended = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "terminate_on_kill": self.terminate_on_kill,
                "include_children": self.include_children,
                "dag_id": self.dag_id,
                "task_id": self.task_id,
                "run_id": self.run_id,
                "map_index": self.map_index,
            },
        )

    @property
    def target(self) -> BatchTarget:
        return BatchTarget(self.aws_conn_id, self.region_name)

    def position_store(self) -> PositionStore:
        if self.dag_id and self.task_id and self.run_id:
            return XComPositionStore(self.dag_id, self.task_id, self.run_id, self.map_index)
        return MemoryPositionStore()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        outcome: WatchOutcome = await watch_batch_job(
            self.target,
            self.job_id,
            self.position_store(),
            self.log,
            interval_s=self.poll_interval,
            deadline=self.deadline,
            include_children=self.include_children,
            # The job's owner marks it watched: a later try (say, of a cleared task) never adopts it.
            claim=batch.CLAIM_BY_TRIGGER if self.terminate_on_kill else None,
        )
        self._ended = outcome.kind is Outcome.ENDED
        yield TriggerEvent({**outcome.to_dict(), "aws_conn_id": self.aws_conn_id, "owned": self.terminate_on_kill})

    async def on_kill(self) -> None:
        """A user stopped the task: terminate the job. Airflow never calls this on a triggerer restart."""
        if self._ended or not self.terminate_on_kill:
            return
        self.log.info("Terminating AWS Batch job %s (task stopped by a user)", self.job_id)
        await terminate_batch_job(self.target, self.job_id, CANCEL_REASON)
        self.log.info("Terminated AWS Batch job %s", self.job_id)
