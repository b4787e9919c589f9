"""The errors of Python functions as jobs, placed on the provider's tree (``airflow_hpc_provider.errors``).

::

    JobSpecError (final: no retry can fix it)
    ├── SerializerUnavailableError   the worker cannot load the serializer (cloudpickle not installed)
    ├── PayloadSerializationError    the function or an argument cannot be serialized: names which, and its type
    └── RemotePythonError            the remote Python cannot run the payload: wrong major.minor, no
                                     cloudpickle, no such interpreter (found before anything is submitted)
    JobFailedError (retryable, like any failed job)
    ├── RemoteFunctionError          the function raised on the cluster or in the container: its type,
    │                                message and the remote traceback
    └── RemoteResultError            the job ended without a readable result (bootstrap failure, lost file)
"""

from __future__ import annotations

from airflow_hpc_provider.errors import JobFailedError, JobSpecError
from airflow_hpc_provider.jobs import JobStatus


class SerializerUnavailableError(JobSpecError):
    """The serializer a Python task needs is not importable on the Airflow worker."""


class PayloadSerializationError(JobSpecError):
    """The function or one of its arguments cannot be serialized; nothing was submitted."""

    def __init__(self, message: str, culprit: str) -> None:
        self.culprit = culprit
        super().__init__(message)


class RemotePythonError(JobSpecError):
    """The Python on the cluster cannot run what this worker serializes (checked before submission)."""


class RemoteFunctionError(JobFailedError):
    """The function raised remotely. The message ends with the remote traceback."""

    def __init__(self, type_name: str, message: str, traceback: str, status: JobStatus | None = None) -> None:
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback
        super().__init__(
            f"the function raised {type_name}: {message}\n\nRemote traceback:\n{traceback.rstrip()}", status
        )


class RemoteResultError(JobFailedError):
    """The job ended without a result this worker can read (the bootstrap failed, the file is gone)."""
