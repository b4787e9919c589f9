"""Slurm's arrays for the engine (:mod:`~airflow_hpc_provider.watching.arrays`): ``MaxArraySize``,
one ``sbatch --array`` per chunk over the process's shared connection, ``scancel`` of elements.

Every element's id is written to its task instance's record on the cluster before any id is
printed (:func:`~airflow_hpc_provider.dialects.slurm_array.submit_script`), so a trigger that runs
again has its element adopted by the same round trip instead of submitted anew.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import slurm, slurm_array
from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.hooks.cancel import cancel_jobs
from airflow_hpc_provider.hooks.refusals import SLURM_REFUSALS
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.hooks.submission import read_submission
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.watching.arrays import ElementRequest, ElementSubmitted
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup, shared_connection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlurmArraySubmitter:
    """Slurm job arrays on the cluster of ``target`` (an engine :class:`~.arrays.ArraySubmitter`)."""

    target: SshTarget
    scheduler: str = "Slurm"

    @property
    def where(self) -> str:
        return self.target.conn_id

    async def read_max_array_size(self) -> int:
        async with shared_connection(self.target, SlurmDialect()) as transport:
            result = await transport.run(slurm_array.MAX_ARRAY_SIZE_SCRIPT)
        size = slurm_array.parse_max_array_size(result.text) if result.exit_status == 0 else None
        if size is None:
            log.warning(
                "could not read MaxArraySize on %s (%s): arrays are cut at Slurm's default, %d",
                self.target.where,
                (result.error_text or result.text).strip() or f"exit {result.exit_status}",
                slurm_array.DEFAULT_MAX_ARRAY_SIZE,
            )
            size = slurm_array.DEFAULT_MAX_ARRAY_SIZE
        return size

    async def submit_chunk(
        self, group: ClusterArrayGroup, requests: Sequence[ElementRequest], number: int, chunks: int
    ) -> list[ElementSubmitted]:
        elements = [
            slurm_array.ArrayElement(index, request.key, request.command, request.map_index, dict(request.env))
            for index, request in enumerate(requests)
        ]
        script = slurm_array.submit_script(
            slurm_array.array_script(group.head, elements),
            elements,
            job_name=group.job_name,
            group=group.digest,
            log_dir=group.log_dir,
            env=dict(group.shared_env),
            working_dir=group.working_dir,
            throttle=group.throttle,
        )
        indexes = [element.index for element in elements]
        async with shared_connection(self.target, SlurmDialect()) as transport:
            result = await transport.run(script)
        outcomes = read_submission(
            result,
            lambda text: slurm_array.parse_submit_output(text, indexes),
            "sbatch",
            self.target.where,
            SLURM_REFUSALS,
        )
        return [_submitted(group.log_dir, element.key, outcomes[element.index], number, chunks) for element in elements]

    async def cancel(self, elements: Sequence[ElementSubmitted]) -> None:
        async with shared_connection(self.target, SlurmDialect()) as transport:
            await cancel_jobs(
                transport,
                SlurmDialect(),
                [element.job_id for element in elements],
                claims=[element.cursor_path for element in elements],
            )


def _submitted(
    log_dir: str, key: JobKey, outcome: slurm_array.ElementOutcome, number: int, chunks: int
) -> ElementSubmitted:
    # An adopted single job (an earlier try submitted with arrays off) keeps its own log's name.
    element = "_" in outcome.job_id
    log_path = (
        slurm_array.element_log_path(log_dir, outcome.job_id)
        if element
        else slurm.log_path(log_dir, key, outcome.job_id)
    )
    return ElementSubmitted(
        job_id=outcome.job_id,
        array_id=outcome.job_id.partition("_")[0],
        adopted=outcome.adopted,
        state=outcome.state,
        ended=outcome.ended,
        index=outcome.index,
        chunk=number,
        chunks=chunks,
        log_path=log_path,
        cursor_path=slurm.cursor_path(log_dir, key, outcome.job_id),
    )
