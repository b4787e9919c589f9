"""The provider's one exception tree.

::

    HpcProviderError
    ├── JobSpecError            bad input, raised at DAG parse time where possible (also a ValueError)
    ├── ConnectionConfigError   an Airflow connection that cannot describe a cluster (also a ValueError)
    ├── RemoteCommandError      a command on the cluster exited non-zero: says where, and shows its stderr
    │   └── SubmissionError     the scheduler refused the job (sbatch/qsub)
    ├── ClusterUnreachableError SSH could not connect or the link dropped; worth retrying
    │   └── ClusterAuthError    authentication or host key verification failed; retrying will not help
    └── JobFailedError          the job ended in any state but success (carries the final status)
"""

from __future__ import annotations

from airflow_hpc_provider.jobs import JobStatus


class HpcProviderError(Exception):
    """Base of every error this provider raises on purpose."""


class JobSpecError(HpcProviderError, ValueError):
    """The task asks for something invalid; the message names the argument and the value."""


class ConnectionConfigError(HpcProviderError, ValueError):
    """The Airflow connection is missing something or holds a value that cannot work."""


class RemoteCommandError(HpcProviderError):
    def __init__(self, what: str, where: str, exit_status: int | None, stderr: str) -> None:
        self.what = what
        self.where = where
        self.exit_status = exit_status
        self.stderr = stderr.strip()
        status = "without an exit status" if exit_status is None else f"exited {exit_status}"
        super().__init__(f"{what} on {where} {status}: {self.stderr!r}")


class SubmissionError(RemoteCommandError):
    """The scheduler refused the submission; nothing was queued."""


class ClusterUnreachableError(HpcProviderError):
    """The cluster could not be reached over SSH; the job itself may be fine."""


class ClusterAuthError(ClusterUnreachableError):
    """SSH reached the host but it refused us, or it is not the host we know: no retry helps."""


class JobFailedError(HpcProviderError):
    def __init__(self, message: str, status: JobStatus | None) -> None:
        self.status = status
        super().__init__(message)
