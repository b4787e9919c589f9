"""The trigger a deferred ``PbsOperator`` waits on."""

from __future__ import annotations

from typing import Any

from airflow_hpc_provider.dialects.pbs import PbsDialect
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.triggers.ssh_job import SshJobTrigger


class PbsJobTrigger(SshJobTrigger):
    """Watches one PBS job through the process's shared PBS poller (see :class:`SshJobTrigger`).

    :param flavour: ``pbs_pro`` or ``torque``: which qstat format and exit codes to read.
    :param log_dir: the connection's log directory, where job scripts record their exit status.
    """

    fields = (*SshJobTrigger.fields, "flavour", "log_dir")

    def __init__(self, *, flavour: str, log_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flavour = PbsFlavour(flavour).value  # a bad flavour fails here, not in a shared poll
        self.log_dir = log_dir

    def dialect(self) -> PbsDialect:
        return PbsDialect(PbsFlavour(self.flavour), self.log_dir)

    def event_extras(self) -> dict[str, Any]:
        return {"flavour": self.flavour}
