"""The trigger a mapped ``SlurmSubmitOperator`` task instance waits on when it runs as an array element."""

from __future__ import annotations

from typing import ClassVar

from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.triggers.array_element import ClusterArrayElementTrigger
from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
from airflow_hpc_provider.watching.slurm_arrays import SlurmArraySubmitter


class SlurmArrayElementTrigger(ClusterArrayElementTrigger, SlurmJobTrigger):
    """Submits its task instance as an element of its group's Slurm array (one ``sbatch --array``
    per chunk), then watches ``<array>_<index>`` (see :class:`ClusterArrayElementTrigger`)."""

    scheduler: ClassVar[str] = "Slurm"

    def submitter(self, target: SshTarget) -> SlurmArraySubmitter:
        return SlurmArraySubmitter(target)
