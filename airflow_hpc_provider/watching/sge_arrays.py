"""Grid Engine's arrays for the engine (:mod:`~airflow_hpc_provider.watching.arrays`): ``max_aj_tasks``,
one ``qsub -t`` per chunk over the process's shared connection, ``qdel <job> -t <task>`` of elements.

Every element's id ``<job>.<task>`` is written to its task instance's record on the cluster before
any id is printed (:func:`~airflow_hpc_provider.dialects.sge_array.submit_script`), so a trigger
that runs again has its element adopted by the same round trip instead of submitted anew.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import sge, sge_array
from airflow_hpc_provider.dialects.array_elements import ArrayElement
from airflow_hpc_provider.dialects.sge import SgeDialect
from airflow_hpc_provider.hooks.sge import SGE_REFUSALS
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.watching.arrays import ElementSubmitted
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup, ClusterArraySubmitter


@dataclass(frozen=True)
class SgeArraySubmitter(ClusterArraySubmitter):
    """Grid Engine job arrays on the cluster of ``target``.

    ``log_dir``: the connection's, as its job triggers' dialect has it, so that submissions go over
    the same shared poller (and connection) as the elements' watching.
    """

    target: SshTarget
    log_dir: str
    scheduler = "Grid Engine"
    submit_command = "qsub"
    refusals = SGE_REFUSALS
    max_size_setting = "max_aj_tasks"
    max_size_script = sge_array.MAX_ARRAY_SIZE_SCRIPT
    default_max_size = sge_array.DEFAULT_MAX_ARRAY_SIZE

    def dialect(self) -> SgeDialect:
        return SgeDialect(self.log_dir)

    def parse_max_size(self, text: str) -> int | None:
        return sge_array.parse_max_array_size(text)

    def submit_script(self, group: ClusterArrayGroup, elements: Sequence[ArrayElement]) -> str:
        return sge_array.submit_script(
            sge_array.array_script(group.head, elements),
            elements,
            job_name=array_job_name(group),
            log_dir=group.log_dir,
            env=dict(group.shared_env),
            working_dir=group.working_dir,
            throttle=group.throttle,
        )

    def parse_submit(self, text: str, elements: Sequence[ArrayElement]) -> Mapping[int, sge_array.ElementOutcome]:
        return sge_array.parse_submit_output(text, [element.index for element in elements])

    def answer(
        self,
        group: ClusterArrayGroup,
        element: ArrayElement,
        outcome: sge_array.ElementOutcome,
        number: int,
        chunks: int,
    ) -> ElementSubmitted:
        return _submitted(group.log_dir, element.key, outcome, number, chunks)


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
