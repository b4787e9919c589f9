"""Slurm's arrays for the engine (:mod:`~airflow_hpc_provider.watching.arrays`): ``MaxArraySize``,
one ``sbatch --array`` per chunk over the process's shared connection, ``scancel`` of elements.

Every element's id is written to its task instance's record on the cluster before any id is
printed (:func:`~airflow_hpc_provider.dialects.slurm_array.submit_script`), so a trigger that runs
again has its element adopted by the same round trip instead of submitted anew.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import slurm, slurm_array
from airflow_hpc_provider.dialects.array_elements import ArrayElement
from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.hooks.refusals import SLURM_REFUSALS
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.watching.arrays import ElementSubmitted
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup, ClusterArraySubmitter


@dataclass(frozen=True)
class SlurmArraySubmitter(ClusterArraySubmitter):
    """Slurm job arrays on the cluster of ``target``."""

    target: SshTarget
    scheduler = "Slurm"
    submit_command = "sbatch"
    refusals = SLURM_REFUSALS
    max_size_setting = "MaxArraySize"
    max_size_script = slurm_array.MAX_ARRAY_SIZE_SCRIPT
    default_max_size = slurm_array.DEFAULT_MAX_ARRAY_SIZE

    def dialect(self) -> SlurmDialect:
        return SlurmDialect()

    def parse_max_size(self, text: str) -> int | None:
        return slurm_array.parse_max_array_size(text)

    def submit_script(self, group: ClusterArrayGroup, elements: Sequence[ArrayElement]) -> str:
        return slurm_array.submit_script(
            slurm_array.array_script(group.head, elements),
            elements,
            job_name=group.job_name,
            group=group.digest,
            log_dir=group.log_dir,
            env=dict(group.shared_env),
            working_dir=group.working_dir,
            throttle=group.throttle,
        )

    def parse_submit(self, text: str, elements: Sequence[ArrayElement]) -> Mapping[int, slurm_array.ElementOutcome]:
        return slurm_array.parse_submit_output(text, [element.index for element in elements])

    def answer(
        self,
        group: ClusterArrayGroup,
        element: ArrayElement,
        outcome: slurm_array.ElementOutcome,
        number: int,
        chunks: int,
    ) -> ElementSubmitted:
        # An adopted single job (an earlier try submitted with arrays off) keeps its own log's name.
        job_id = outcome.job_id
        log_path = (
            slurm_array.element_log_path(group.log_dir, job_id)
            if "_" in job_id
            else slurm.log_path(group.log_dir, element.key, job_id)
        )
        return ElementSubmitted(
            job_id=job_id,
            array_id=job_id.partition("_")[0],
            adopted=outcome.adopted,
            state=outcome.state,
            ended=outcome.ended,
            index=outcome.index,
            chunk=number,
            chunks=chunks,
            log_path=log_path,
            cursor_path=slurm.cursor_path(group.log_dir, element.key, job_id),
        )
