"""The trigger a mapped ``SgeOperator`` task instance waits on when it runs as an array element."""

from __future__ import annotations

from typing import ClassVar

from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.triggers.array_element import ClusterArrayElementTrigger
from airflow_hpc_provider.triggers.sge import SgeJobTrigger
from airflow_hpc_provider.watching.sge_arrays import SgeArraySubmitter


class SgeArrayElementTrigger(ClusterArrayElementTrigger, SgeJobTrigger):
    """Submits its task instance as an element of its group's Grid Engine array (one ``qsub -t``
    per chunk), then watches ``<job>.<task>`` (see :class:`ClusterArrayElementTrigger`)."""

    fields: ClassVar[tuple[str, ...]] = (*ClusterArrayElementTrigger.fields, "log_dir")
    scheduler: ClassVar[str] = "Grid Engine"

    def submitter(self, target: SshTarget) -> SgeArraySubmitter:
        return SgeArraySubmitter(target, self.log_dir)
