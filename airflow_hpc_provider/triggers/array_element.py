"""The trigger of a mapped task instance that runs as one element of a scheduler array on a
cluster reached over SSH: it asks the engine to submit it with its siblings, then watches its element."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.triggers.ssh_job import SshJobTrigger
from airflow_hpc_provider.watching.arrays import ArrayCollector, ArraySubmitter, ElementSubmitted, collector_for
from airflow_hpc_provider.watching.cluster import PollerSettings, shared_poller
from airflow_hpc_provider.watching.cluster_arrays import request_from_dict


class ClusterArrayElementTrigger(SshJobTrigger):
    """Submits its task instance as an element of its group's array, then watches it.

    The submission is the engine's (:mod:`~airflow_hpc_provider.watching.arrays`): elements of one
    group deferred together go in one array submission. A trigger run again (a restarted
    triggerer) asks again and has its element adopted, never submitted twice. A scheduler's
    element trigger is this with its job trigger (for its dialect) and its :meth:`submitter`.

    :param element: what the element runs and shares with its array (``request_to_dict``).
    :param job_id: empty until the element is submitted (a trigger's stored kwargs never change).
    """

    fields: ClassVar[tuple[str, ...]] = (*SshJobTrigger.fields, "element")
    scheduler: ClassVar[str] = "cluster"

    def __init__(
        self,
        conn_id: str,
        element: dict[str, Any],
        job_id: str = "",
        log_path: str = "",
        cursor_path: str = "",
        poll_interval: float = 10.0,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            conn_id=conn_id,
            job_id=job_id,
            log_path=log_path,
            cursor_path=cursor_path,
            poll_interval=poll_interval,
            deadline=deadline,
            **kwargs,
        )
        self.element = element
        self._collector: ArrayCollector | None = None

    def submitter(self, target: SshTarget) -> ArraySubmitter:
        raise NotImplementedError

    def describe(self) -> str:
        if self.job_id:
            return super().describe()
        return f"the {self.scheduler} array element of map_index {self.element.get('map_index')} on {self.conn_id}"

    async def follow(self) -> dict[str, Any]:
        target = await self._target()
        # Held from before the submission to the end of the watch: the submission and the watching
        # go over the process's one connection to the cluster.
        async with shared_poller(target, self.dialect(), PollerSettings(interval_s=self.poll_interval)):
            if not self.job_id:
                request = request_from_dict(self.conn_id, self.element)
                self._collector = collector_for(self.submitter(target), request.group)
                self._took(await self._collector.submit(request), request.map_index)
            payload = await super().follow()
        return {**payload, "array_element": True}

    def _took(self, element: ElementSubmitted, map_index: int) -> None:
        self.job_id, self.log_path, self.cursor_path = element.job_id, element.log_path, element.cursor_path
        log_element_taken(self.log, self.scheduler, self.conn_id, element, map_index)

    async def stop(self) -> None:
        if not self.job_id:
            key = JobKey(str(self.element["task_digest"]), int(self.element["try_number"]))
            if self._collector is not None:
                self._collector.stop(key)
            return
        await super().stop()


def log_element_taken(log: Any, scheduler: str, where: str, element: ElementSubmitted, map_index: int) -> None:
    """The task log's line on where the instance went: submitted as an element, or adopted."""
    chunk = f"chunk {element.chunk}/{element.chunks}"
    place = f"(array {element.array_id}, index {element.index} of {chunk}, map_index {map_index})"
    if not element.adopted:
        log.info("Submitted as %s array job %s %s on %s", scheduler, element.job_id, place, where)
    elif element.ended:
        log.warning(
            "Adopted %s job %s on %s: an earlier try of this task submitted it and it already ended (%s) "
            "while nothing watched it. It is not run again: its outcome decides this try, and its output "
            "follows. If it failed, the next retry submits a new job.",
            scheduler,
            element.job_id,
            where,
            element.state,
        )
    else:
        log.info(
            "Adopted %s job %s on %s: it was submitted for this task instance before (by a triggerer "
            "that restarted or handed it over, or by an earlier try) and is still %s",
            scheduler,
            element.job_id,
            where,
            element.state,
        )
