"""The trigger a deferred ``SlurmSubmitOperator`` waits on."""

from __future__ import annotations

from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.triggers.ssh_job import SshJobTrigger


class SlurmJobTrigger(SshJobTrigger):
    """Watches one Slurm job through the process's shared Slurm poller (see :class:`SshJobTrigger`)."""

    def dialect(self) -> SlurmDialect:
        return SlurmDialect()
