"""The provider's one exception tree.

::

    HpcProviderError
    ├── JobSpecError*             bad input, raised at DAG parse time where possible (also a ValueError)
    │   ├── SerializerUnavailableError*  a Python task's serializer (cloudpickle) is not on the worker
    │   ├── PayloadSerializationError*   a Python task's function or argument cannot be serialized
    │   └── RemotePythonError*    the cluster's Python cannot run the payload (found before submitting)
    ├── ConnectionConfigError*    an Airflow connection that cannot describe a cluster (also a ValueError)
    │   └── SsmToolsMissingError*  the AWS CLI or the Session Manager plugin is missing where Airflow runs
    ├── RemoteCommandError        a command on the cluster exited non-zero: says where, and shows its stderr
    │   └── SubmissionError       sbatch/qsub failed (the controller may just be busy: worth retrying)
    │       └── SubmissionRefusedError*  the scheduler refused the job itself (account, partition, QoS...)
    ├── ClusterUnreachableError   SSH could not connect or the link dropped; worth retrying
    │   └── ClusterAuthError*     authentication failed: the login node refused the key or password
    │       └── HostKeyMismatchError*  the login node's host key is not the one the connection trusts
    ├── AllocationError           a tenant's reservation cannot host it (unknown, not running, no tmux server)
    ├── InstanceLimitError        an EC2 connection already runs ``max_instances`` instances: none launched
    ├── StartupError              an EC2 instance did not come up in time; it was terminated
    ├── JobFailedError            the job ended in any state but success (carries the final status)
    │   ├── RemoteFunctionError   a Python task's function raised remotely: type, message, traceback
    │   └── RemoteResultError     a Python task's job ended without a readable result
    ├── SetupError                the AWS set-up command cannot go on: a missing or bad flag, a resource
    │                             under its name that it did not make, AWS refusing a step
    └── AwsSignal                 internal: an AWS answer the Batch poller acts on; never reaches a task
        ├── Throttled             AWS asked us to slow down; nothing is concluded from this poll
        ├── LogStreamMissing      a CloudWatch stream does not exist (yet)
        └── LogGroupMissing       a CloudWatch log group does not exist (yet)

The starred errors are *final*: also an Airflow ``AirflowFailException``, so a task that raises it fails at once
without using its ``retries`` -- no retry can fix a wrong key, an unknown account or a bad argument.
A job that ran and failed (:class:`JobFailedError`) stays retryable.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException

from airflow_hpc_provider.jobs import JobStatus


class HpcProviderError(Exception):
    """Base of every error this provider raises on purpose."""


class FinalError(AirflowFailException):
    """Mixed into the errors no retry can fix: Airflow fails the task without using its retries."""


class JobSpecError(HpcProviderError, FinalError, ValueError):
    """The task asks for something invalid; the message names the argument and the value."""


class ConnectionConfigError(HpcProviderError, FinalError, ValueError):
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
    """The submission failed; nothing was queued. The scheduler may only have been busy."""


class SubmissionRefusedError(SubmissionError, FinalError):
    """The scheduler refused the job as asked (invalid account, partition, QoS, resources)."""


class ClusterUnreachableError(HpcProviderError):
    """The cluster could not be reached over SSH; the job itself may be fine."""


class ClusterAuthError(ClusterUnreachableError, FinalError):
    """SSH reached the host but it refused us, or it is not the host we know: no retry helps."""


class HostKeyMismatchError(ClusterAuthError):
    """The login node's host key is unknown or differs from the one the connection trusts."""


class JobFailedError(HpcProviderError):
    def __init__(self, message: str, status: JobStatus | None) -> None:
        self.status = status
        super().__init__(message)


class AllocationError(HpcProviderError):
    """The reservation cannot host a tenant: unknown, not running, or without its tmux server."""

    def __init__(self, message: str, *, reservation: str, job_id: str | None = None) -> None:
        self.reservation = reservation
        self.job_id = job_id
        super().__init__(message)


class SsmToolsMissingError(ConnectionConfigError):
    """The AWS CLI or the Session Manager plugin is not installed where Airflow runs."""


class InstanceLimitError(HpcProviderError):
    """``max_instances`` of this connection's instances already run: no instance was launched."""


class StartupError(HpcProviderError):
    """The instance did not come up (running, sshd reachable, task delivered) in time; it was terminated."""


class AwsSignal(HpcProviderError):
    """An AWS answer the Batch poller turns into a decision of its own; caught there, never raised to a task."""


class Throttled(AwsSignal):
    """AWS asked us to slow down; nothing is concluded from this poll."""


class LogStreamMissing(AwsSignal):
    """A FilterLogEvents call named a stream that does not exist (yet)."""


class LogGroupMissing(AwsSignal):
    """A FilterLogEvents call named a log group that does not exist (yet)."""


# Python functions as jobs (python_task/): the function or its payload, and its remote end.


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


class SetupError(HpcProviderError):
    """The AWS set-up command (``airflow hpc-aws-setup``) stops: the message says why and what to do."""
