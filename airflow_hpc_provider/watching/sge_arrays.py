"""Grid Engine's arrays for the engine (:mod:`~airflow_hpc_provider.watching.arrays`): ``max_aj_tasks``,
one ``qsub -t`` per chunk over the process's shared connection, ``qdel <job> -t <task>`` of elements.

Every element's id ``<job>.<task>`` is written to its task instance's record on the cluster before
any id is printed (:func:`~airflow_hpc_provider.dialects.sge_array.submit_script`), so a trigger
that runs again has its element adopted by the same round trip instead of submitted anew.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import sge, sge_array
from airflow_hpc_provider.dialects.array_elements import ArrayElement
from airflow_hpc_provider.dialects.sge import SgeDialect
from airflow_hpc_provider.hooks.cancel import cancel_jobs
from airflow_hpc_provider.hooks.sge import SGE_REFUSALS
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.hooks.submission import read_submission
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.watching.arrays import ElementRequest, ElementSubmitted
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup, shared_connection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SgeArraySubmitter:
    """Grid Engine job arrays on the cluster of ``target`` (an engine :class:`~.arrays.ArraySubmitter`).

    ``log_dir``: the connection's, as its job triggers' dialect has it, so that submissions go over
    the same shared poller (and connection) as the elements' watching.
    """

    target: SshTarget
    log_dir: str
    scheduler: str = "Grid Engine"

    @property
    def where(self) -> str:
        return self.target.conn_id

    def _dialect(self) -> SgeDialect:
        return SgeDialect(self.log_dir)

    async def read_max_array_size(self) -> int:
        async with shared_connection(self.target, self._dialect()) as transport:
            result = await transport.run(sge_array.MAX_ARRAY_SIZE_SCRIPT)
        size = sge_array.parse_max_array_size(result.text) if result.exit_status == 0 else None
        if size is None:
            log.warning(
                "could not read max_aj_tasks on %s (%s): arrays are cut at Grid Engine's default, %d",
                self.target.where,
                (result.error_text or result.text).strip() or f"exit {result.exit_status}",
                sge_array.DEFAULT_MAX_ARRAY_SIZE,
            )
            size = sge_array.DEFAULT_MAX_ARRAY_SIZE
        return size

    async def submit_chunk(
        self, group: ClusterArrayGroup, requests: Sequence[ElementRequest], number: int, chunks: int
    ) -> list[ElementSubmitted]:
        elements = [
            ArrayElement(index, request.key, request.command, request.map_index, dict(request.env))
            for index, request in enumerate(requests)
        ]
        script = sge_array.submit_script(
            sge_array.array_script(group.head, elements),
            elements,
            job_name=array_job_name(group),
            log_dir=group.log_dir,
            env=dict(group.shared_env),
            working_dir=group.working_dir,
            throttle=group.throttle,
        )
        indexes = [element.index for element in elements]
        async with shared_connection(self.target, self._dialect()) as transport:
            result = await transport.run(script)
        outcomes = read_submission(
            result,
            lambda text: sge_array.parse_submit_output(text, indexes),
            "qsub",
            self.target.where,
            SGE_REFUSALS,
        )
        return [_submitted(group.log_dir, element.key, outcomes[element.index], number, chunks) for element in elements]

    async def cancel(self, elements: Sequence[ElementSubmitted]) -> None:
        async with shared_connection(self.target, self._dialect()) as transport:
            await cancel_jobs(
                transport,
                self._dialect(),
                [element.job_id for element in elements],
                claims=[element.cursor_path for element in elements],
            )


def array_job_name(group: ClusterArrayGroup) -> str:
    """``<name>-<group digest>``: Grid Engine's rules for a name (a letter first; see
    :func:`~airflow_hpc_provider.dialects.sge.job_name`), the group in it for whoever reads qstat."""
    return f"{sge.name_base(group.job_name)}-{group.digest}"


def _submitted(
    log_dir: str, key: JobKey, outcome: sge_array.ElementOutcome, number: int, chunks: int
) -> ElementSubmitted:
    # An adopted single job (an earlier try submitted with arrays off) keeps its own log's name.
    element = "." in outcome.job_id
    log_path = (
        sge_array.element_log_path(log_dir, outcome.job_id) if element else sge.log_path(log_dir, key, outcome.job_id)
    )
    return ElementSubmitted(
        job_id=outcome.job_id,
        array_id=outcome.job_id.partition(".")[0],
        adopted=outcome.adopted,
        state=outcome.state,
        ended=outcome.ended,
        # The log's "index": the element's task id (its submission numbered the tasks from 1).
        index=int(outcome.job_id.partition(".")[2]) if element else outcome.index,
        chunk=number,
        chunks=chunks,
        log_path=log_path,
        cursor_path=sge.cursor_path(log_dir, key, outcome.job_id),
    )
