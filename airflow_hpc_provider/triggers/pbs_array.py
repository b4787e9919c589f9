"""The trigger a mapped ``PbsOperator`` task instance waits on when it runs as an array element."""

from __future__ import annotations

from typing import ClassVar

from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.triggers.array_element import ClusterArrayElementTrigger
from airflow_hpc_provider.triggers.pbs import PbsJobTrigger
from airflow_hpc_provider.watching.pbs_arrays import PbsArraySubmitter


class PbsArrayElementTrigger(ClusterArrayElementTrigger, PbsJobTrigger):
    """Submits its task instance as an element of its group's PBS array (one ``qsub -J``/``-t``
    per chunk), then watches ``<array>[<index>]`` (see :class:`ClusterArrayElementTrigger`)."""

    scheduler: ClassVar[str] = "PBS"
    # Both parents' stored fields: a rebuilt trigger (a restarted triggerer) needs the flavour too.
    fields: ClassVar[tuple[str, ...]] = (*ClusterArrayElementTrigger.fields, "flavour", "log_dir")

    def submitter(self, target: SshTarget) -> PbsArraySubmitter:
        return PbsArraySubmitter(target, PbsFlavour(self.flavour), self.log_dir)
