"""The trigger a mapped ``BatchRevisionOperator`` task instance waits on when it runs as a child of
an AWS Batch array job."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.triggers.array_element import log_element_taken
from airflow_hpc_provider.triggers.batch import BatchJobTrigger
from airflow_hpc_provider.watching.arrays import ArrayCollector, collector_for
from airflow_hpc_provider.watching.batch_arrays import BatchArraySubmitter, request_from_dict
from airflow_hpc_provider.watching.batch_watch import watch_batch_job


class BatchArrayElementTrigger(BatchJobTrigger):
    """Submits its task instance as a child of its group's Batch array, then watches that child.

    The submission is the engine's (:mod:`~airflow_hpc_provider.watching.arrays`, with
    :class:`~airflow_hpc_provider.watching.batch_arrays.BatchArraySubmitter`): elements of one group
    deferred together go in one SubmitJob with ``arrayProperties``. A trigger run again (a
    restarted triggerer) asks again and has its child adopted, never submitted twice. The child is
    never tagged (Batch refuses tags on children); a user's stop terminates the child alone.

    :param element: what the element runs and shares with its array (``request_to_dict``).
    :param job_id: empty until the element is submitted (a trigger's stored kwargs never change).
    """

    fields: ClassVar[tuple[str, ...]] = (*BatchJobTrigger.fields, "element")

    def __init__(self, element: dict[str, Any], job_id: str = "", **kwargs: Any) -> None:
        super().__init__(job_id=job_id, **kwargs)
        self.element = element
        self._collector: ArrayCollector | None = None

    def describe(self) -> str:
        if self.job_id:
            return super().describe()
        return f"the AWS Batch array element of map_index {self.element.get('map_index')} on {self.aws_conn_id}"

    async def follow(self) -> dict[str, Any]:
        if not self.job_id:
            request = request_from_dict(self.aws_conn_id or "", self.element)
            self._collector = collector_for(BatchArraySubmitter(self.target), request.group)
            element = await self._collector.submit(request)
            self.job_id = element.job_id
            log_element_taken(self.log, "AWS Batch", str(self.aws_conn_id), element, request.map_index)
        outcome = await watch_batch_job(
            self.target,
            self.job_id,
            self.position_store(),
            self.log,
            interval_s=self.poll_interval,
            deadline=self.deadline,
            claim=None,  # Batch cannot tag a child: only its own try adopts it (see batch_arrays)
        )
        return {**outcome.to_dict(), "aws_conn_id": self.aws_conn_id, "owned": True, "array_element": True}

    async def stop(self) -> None:
        if not self.job_id:
            if self._collector is not None:
                self._collector.stop(JobKey(str(self.element["task_digest"]), int(self.element["try_number"])))
            return
        await super().stop()
