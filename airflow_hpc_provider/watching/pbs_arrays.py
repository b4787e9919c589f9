"""PBS job arrays for the engine (:mod:`~airflow_hpc_provider.watching.arrays`): the server's
largest array, one ``qsub -J`` (PBS Pro) or ``qsub -t`` (Torque) per chunk over the process's
shared connection, and cancelling elements.

Every element's id is written to its task instance's record on the cluster before any id is
printed (:func:`~airflow_hpc_provider.dialects.pbs_array.submit_script`), so a trigger that runs
again has its element adopted by the same round trip instead of submitted anew.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import pbs_array
from airflow_hpc_provider.dialects.array_elements import ArrayElement
from airflow_hpc_provider.dialects.pbs import PbsDialect
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.hooks.refusals import PBS_REFUSALS
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.watching.arrays import ElementSubmitted
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup, ClusterArraySubmitter


@dataclass(frozen=True)
class PbsArraySubmitter(ClusterArraySubmitter):
    """PBS job arrays on the cluster of ``target``, of the connection's ``flavour``."""

    target: SshTarget
    flavour: PbsFlavour
    log_dir: str
    scheduler = "PBS"
    submit_command = "qsub"
    refusals = PBS_REFUSALS
    max_size_setting = "the largest array"
    max_size_script = pbs_array.MAX_ARRAY_SIZE_SCRIPT
    default_max_size = pbs_array.DEFAULT_MAX_ARRAY_SIZE

    def dialect(self) -> PbsDialect:
        return PbsDialect(self.flavour, self.log_dir)

    def parse_max_size(self, text: str) -> int | None:
        return pbs_array.parse_max_array_size(text)

    def submit_script(self, group: ClusterArrayGroup, elements: Sequence[ArrayElement]) -> str:
        return pbs_array.submit_script(
            self.flavour,
            group.head,
            elements,
            job_name=group.job_name,
            group=group.digest,
            log_dir=group.log_dir,
            env=dict(group.shared_env),
            throttle=group.throttle,
        )

    def parse_submit(self, text: str, elements: Sequence[ArrayElement]) -> Mapping[int, pbs_array.PbsElementOutcome]:
        return pbs_array.parse_submit_output(text, elements)

    def answer(
        self,
        group: ClusterArrayGroup,
        element: ArrayElement,
        outcome: pbs_array.PbsElementOutcome,
        number: int,
        chunks: int,
    ) -> ElementSubmitted:
        log_path, cursor_path = pbs_array.element_paths(group.log_dir, element.key.task_digest, outcome)
        return ElementSubmitted(
            job_id=outcome.job_id,
            array_id=outcome.job_id.split("[")[0].split(".")[0],
            adopted=outcome.adopted,
            state=outcome.state,
            ended=outcome.ended,
            index=_array_index(outcome.job_id),
            chunk=number,
            chunks=chunks,
            log_path=log_path,
            cursor_path=cursor_path,
        )


def _array_index(job_id: str) -> int:
    """The element's index in its array (``123[4].server`` -> 4); 0 for a lone job."""
    _, bracket, rest = job_id.partition("[")
    index = rest.partition("]")[0]
    return int(index) if bracket and index.isdigit() else 0
