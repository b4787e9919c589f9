"""The trigger a deferred ``SgeOperator`` waits on."""

from __future__ import annotations

from typing import Any

from airflow_hpc_provider.dialects.sge import SgeDialect
from airflow_hpc_provider.triggers.ssh_job import SshJobTrigger


class SgeJobTrigger(SshJobTrigger):
    """Watches one Grid Engine job through the process's shared poller (see :class:`SshJobTrigger`).

    :param log_dir: the connection's log directory, where :func:`~airflow_hpc_provider.dialects.sge.cancel_script`
        marks the jobs this provider deleted (accounting alone cannot tell a ``qdel`` from a kill).
    """

    fields = (*SshJobTrigger.fields, "log_dir")

    def __init__(self, *, log_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_dir = log_dir

    def dialect(self) -> SgeDialect:
        return SgeDialect(self.log_dir)
