"""PBS job arrays for the engine (:mod:`~airflow_hpc_provider.watching.arrays`): the server's
largest array, one ``qsub -J`` (PBS Pro) or ``qsub -t`` (Torque) per chunk over the process's
shared connection, and cancelling elements.

Every element's id is written to its task instance's record on the cluster before any id is
printed (:func:`~airflow_hpc_provider.dialects.pbs_array.submit_script`), so a trigger that runs
again has its element adopted by the same round trip instead of submitted anew.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import pbs_array
from airflow_hpc_provider.dialects.array_elements import ArrayElement
from airflow_hpc_provider.dialects.pbs import PbsDialect
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.hooks.cancel import cancel_jobs
from airflow_hpc_provider.hooks.refusals import PBS_REFUSALS
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.hooks.submission import read_submission
from airflow_hpc_provider.watching.arrays import ElementRequest, ElementSubmitted
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup, shared_connection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PbsArraySubmitter:
    """PBS job arrays on the cluster of ``target`` (an engine :class:`~.arrays.ArraySubmitter`)."""

    target: SshTarget
    flavour: PbsFlavour
    log_dir: str
    scheduler: str = "PBS"

    @property
    def where(self) -> str:
        return self.target.conn_id

    def dialect(self) -> PbsDialect:
        return PbsDialect(self.flavour, self.log_dir)

    async def read_max_array_size(self) -> int:
        async with shared_connection(self.target, self.dialect()) as transport:
            result = await transport.run(pbs_array.MAX_ARRAY_SIZE_SCRIPT)
        size = pbs_array.parse_max_array_size(result.text) if result.exit_status == 0 else None
        if size is None:
            log.warning(
                "could not read the largest array on %s (%s): arrays are cut at PBS Pro's default, %d",
                self.target.where,
                (result.error_text or result.text).strip() or f"exit {result.exit_status}",
                pbs_array.DEFAULT_MAX_ARRAY_SIZE,
            )
            size = pbs_array.DEFAULT_MAX_ARRAY_SIZE
        return size

    async def submit_chunk(
        self, group: ClusterArrayGroup, requests: Sequence[ElementRequest], number: int, chunks: int
    ) -> list[ElementSubmitted]:
        elements = [
            ArrayElement(index, request.key, request.command, request.map_index, dict(request.env))
            for index, request in enumerate(requests)
        ]
        script = pbs_array.submit_script(
            self.flavour,
            group.head,
            elements,
            job_name=group.job_name,
            group=group.digest,
            log_dir=group.log_dir,
            env=dict(group.shared_env),
            throttle=group.throttle,
        )
        async with shared_connection(self.target, self.dialect()) as transport:
            result = await transport.run(script)
        outcomes = read_submission(
            result,
            lambda text: pbs_array.parse_submit_output(text, elements),
            "qsub",
            self.target.where,
            PBS_REFUSALS,
        )
        answers = []
        for element in elements:
            outcome = outcomes[element.index]
            log_path, cursor_path = pbs_array.element_paths(group.log_dir, element.key.task_digest, outcome)
            answers.append(
                ElementSubmitted(
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
            )
        return answers

    async def cancel(self, elements: Sequence[ElementSubmitted]) -> None:
        async with shared_connection(self.target, self.dialect()) as transport:
            await cancel_jobs(
                transport,
                self.dialect(),
                [element.job_id for element in elements],
                claims=[element.cursor_path for element in elements],
            )


def _array_index(job_id: str) -> int:
    """The element's index in its array (``123[4].server`` -> 4); 0 for a lone job."""
    _, bracket, rest = job_id.partition("[")
    index = rest.partition("]")[0]
    return int(index) if bracket and index.isdigit() else 0
