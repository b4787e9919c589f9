"""The trigger a deferred ``BatchRevisionOperator`` waits on: thin, the work is in the Batch poller."""

from __future__ import annotations

from typing import Any, ClassVar

import airflow_hpc_provider.aws_extra  # noqa: F401  (first: names the extra when it is missing)
from airflow_hpc_provider.dialects import batch
from airflow_hpc_provider.triggers.base import HpcTrigger
from airflow_hpc_provider.watching.batch import BatchTarget
from airflow_hpc_provider.watching.batch_logs import MemoryPositionStore, PositionStore, XComPositionStore
from airflow_hpc_provider.watching.batch_watch import terminate_batch_job, watch_batch_job

CANCEL_REASON = "Stopped from Airflow: the task was marked failed, marked success or cleared"


class BatchJobTrigger(HpcTrigger):
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

    fields: ClassVar[tuple[str, ...]] = (
        "job_id",
        "aws_conn_id",
        "region_name",
        "poll_interval",
        "deadline",
        "terminate_on_kill",
        "include_children",
        "dag_id",
        "task_id",
        "run_id",
        "map_index",
    )
    stop_words = ("Terminating", "Terminated")

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

    @property
    def target(self) -> BatchTarget:
        return BatchTarget(self.aws_conn_id, self.region_name)

    def position_store(self) -> PositionStore:
        if self.dag_id and self.task_id and self.run_id:
            return XComPositionStore(self.dag_id, self.task_id, self.run_id, self.map_index)
        return MemoryPositionStore()

    def describe(self) -> str:
        return f"AWS Batch job {self.job_id}"

    @property
    def owns_job(self) -> bool:
        return self.terminate_on_kill

    async def follow(self) -> dict[str, Any]:
        outcome = await watch_batch_job(
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
        return {**outcome.to_dict(), "aws_conn_id": self.aws_conn_id, "owned": self.terminate_on_kill}

    async def stop(self) -> None:
        await terminate_batch_job(self.target, self.job_id, CANCEL_REASON)
