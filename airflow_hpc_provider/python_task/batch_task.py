"""A Python function as an AWS Batch job: what ``@task.batch`` adds to ``BatchRevisionOperator``.

:class:`BatchPythonJob` sits in front of the operator and changes only what the container runs;
the operator's flow (adopt an earlier try's job or submit, defer, stream the CloudWatch lines,
terminate on timeout or kill) runs unchanged. What every decorated task shares (arguments,
serialization, the end) is :class:`~airflow_hpc_provider.python_task.remote_call.RemotePythonCall`.

Before submission: the call is serialized in ``execute`` (an argument that cannot be pickled fails
the task with nothing submitted); a task that states its image's Python (``python_version="3.11"``)
has it compared with the worker's before anything reaches AWS (the image itself cannot be asked
without running it: without the statement, the bootstrap compares at container start); then, once
the operator knows it submits (no earlier try's job to adopt), a payload past the inline limit is
stored in S3 (the bucket's encryption stated), the container's command becomes the bootstrap and
its environment carries the manifest (``AIRFLOW_HPC_PAYLOAD``), the result's key a template the
container fills with its ``AWS_BATCH_JOB_ID``.

After the job ended: the result document of the event's job id is read from S3, so a retry that
adopted an earlier try's job finds that job's result; then the payloads of every try of the task
and the document are deleted (``cleanup="delete"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from airflow.sdk import Context

import airflow_hpc_provider.aws_extra  # noqa: F401  (first: names the extra when it is missing)
from airflow_hpc_provider.dialects import batch
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.hooks.batch import BatchHook
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.operators.batch import BatchRevisionOperator, ContainerCommand
from airflow_hpc_provider.operators.batch_request import NO_RESOURCES
from airflow_hpc_provider.python_task import s3_objects
from airflow_hpc_provider.python_task.cleanup import CleanupPolicy
from airflow_hpc_provider.python_task.codec import BATCH_INLINE_LIMIT_BYTES, encode_body
from airflow_hpc_provider.python_task.launch import MANIFEST_ENV, batch_command, batch_environment
from airflow_hpc_provider.python_task.manifest import InlineBody, PayloadManifest, S3Body, check_template
from airflow_hpc_provider.python_task.preflight import check_stated_version
from airflow_hpc_provider.python_task.remote_call import RemotePythonCall
from airflow_hpc_provider.python_task.results import Referencer, ResultDocument
from airflow_hpc_provider.python_task.serializer import PythonVersion, SerializedCall

DEFAULT_PAYLOAD_PREFIX = "airflow-hpc/python"
# S3's rules for a bucket name (3-63 characters: lower-case letters, digits, dots, hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_payload_location(bucket: Any, prefix: Any) -> tuple[str, str]:
    """The bucket and key prefix of payloads and results, checked when the DAG is parsed."""
    if not isinstance(bucket, str) or not _BUCKET.match(bucket) or ".." in bucket:
        raise JobSpecError(
            f"payload_bucket={bucket!r}: give the name of an S3 bucket (3-63 characters: a-z, 0-9, '.', '-'), "
            "where payloads and results go (a function's result always travels through S3 on Batch)"
        )
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise JobSpecError(f"payload_prefix={prefix!r}: give a key prefix, e.g. {DEFAULT_PAYLOAD_PREFIX!r}")
    try:
        check_template(prefix, frozenset())
    except ValueError as error:
        raise JobSpecError(f"payload_prefix: {error}") from None
    return bucket, prefix.strip("/")


def check_python_version(stated: Any) -> str | None:
    """``python_version``: a major.minor (a micro is allowed and ignored), checked when the DAG is parsed."""
    if stated is None:
        return None
    try:
        if not isinstance(stated, str):
            raise ValueError("give it as text, e.g. '3.11'")
        PythonVersion.parse(stated)
    except ValueError as error:
        raise JobSpecError(f"python_version={stated!r}: {error}") from None
    return stated


class BatchPythonJob(RemotePythonCall, BatchRevisionOperator):
    """Mixin: run ``python_callable(*op_args, **op_kwargs)`` as the Batch job (see the module docstring).

    :param payload_bucket: the S3 bucket of payloads past the inline limit and of result documents.
    :param payload_prefix: the key prefix under it.
    :param python: the image's interpreter (a name on its PATH or a path); it needs cloudpickle and,
        to reach S3, boto3.
    :param python_version: the major.minor of that interpreter (``"3.11"``), when the task knows it:
        a worker of another major.minor then fails the task before submitting. Without it, the
        bootstrap compares the versions when the container starts.
    :param cleanup: ``"delete"`` (default) or ``"keep"``: see the docs.
    :param result_inline_limit_bytes: a returned value larger than this, pickled, stays in S3 and
        XCom holds a reference to it.
    """

    # Each job's payload is written from the worker before it is submitted: no array children.
    supports_arrays: ClassVar[bool] = False

    def __init__(
        self,
        *,
        payload_bucket: str | None = None,
        payload_prefix: str = DEFAULT_PAYLOAD_PREFIX,
        python_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.payload_bucket, self.payload_prefix = check_payload_location(payload_bucket, payload_prefix)
        self.python_version = check_python_version(python_version)
        if kwargs.get("job_id") is not None:
            raise JobSpecError("job_id= is not for a decorated function: the function is what the job runs")
        if kwargs.get("wait_for_completion") is False:
            raise JobSpecError("wait_for_completion=False: a decorated function's task waits for its result")
        if kwargs.get("array_size") is not None:
            raise JobSpecError("array_size= is not for a decorated function: use .expand() to map it")
        if kwargs.get("git") is not None:
            raise JobSpecError("git= is not for a decorated function: the function travels with its task")
        self._call: SerializedCall | None = None
        super().__init__(**kwargs)
        if MANIFEST_ENV in self.env:
            raise JobSpecError(f"env={MANIFEST_ENV!r} is the manifest's own variable")

    # -- before submission ---------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        self._call = self.serialized_call()  # before anything reaches AWS
        if self.python_version is not None:
            check_stated_version(self.python_version, image=self.image or f"of job definition {self.job_definition}")
            self.log.info("The image's Python (python_version): %s", self.python_version)
        return super().execute(context)

    def container_command(self, hook: BatchHook, key: JobKey, env: Mapping[str, str]) -> ContainerCommand:
        call = self._call
        if call is None:
            raise RuntimeError("container_command before execute serialized the call")
        body = encode_body(call.data)
        target = s3_objects.result_target(
            hook, self.payload_bucket, s3_objects.result_key_template(self.payload_prefix, key)
        )
        command = tuple(batch_command(self.python))
        # Inline while the payload is small and the container's overrides (the bootstrap command,
        # the manifest and the task's env) stay within what ECS starts (dialects/batch.py).
        inline = body.fits_inline(BATCH_INLINE_LIMIT_BYTES)
        environment = batch_environment(self._manifest(call, InlineBody(body), target)) if inline else {}
        if inline and batch.fits_overrides(command, {**env, **environment}, NO_RESOURCES):
            stored = f"{len(body.data)} bytes ({body.compression.value}), in the job's environment"
        else:
            payload_key = s3_objects.payload_key(self.payload_prefix, key)
            where = s3_objects.store_payload(hook, self.payload_bucket, payload_key, body, presign_s=None)
            environment = batch_environment(self._manifest(call, where, target))
            stored = (
                f"{len(body.data)} bytes ({body.compression.value}), stored at s3://{self.payload_bucket}/{payload_key}"
            )
        self.log.info("Payload: %s", stored)
        # The bootstrap (a packed loader) and the manifest say nothing to a reader: neither is logged.
        return ContainerCommand(
            command=command,
            env=environment,
            for_log=f"{self.python} -c <the bootstrap running {self.callable_name()}(); not shown>",
        )

    def _manifest(self, call: SerializedCall, where: InlineBody | S3Body, target: Any) -> PayloadManifest:
        return PayloadManifest.for_call(
            call,
            where,
            target,
            multiple_outputs=bool(self.multiple_outputs),
            result_inline_limit_bytes=self.result_inline_limit_bytes,
        )

    # -- after the job ended -------------------------------------------------------------------------

    def fetch_result(self, context: Context, job_id: str, *, read: bool) -> tuple[str, bytes | None]:
        hook = self.batch_hook()
        key = self.job_key(context)
        result_key = s3_objects.result_key(self.payload_prefix, key, job_id)
        document = s3_objects.read_result(hook, self.payload_bucket, result_key) if read else None
        if self.cleanup is CleanupPolicy.DELETE:
            # Every try's payload: the job may have been an earlier try's, adopted by this one.
            tries = [
                s3_objects.payload_key(self.payload_prefix, replace(key, try_number=number))
                for number in range(1, key.try_number + 1)
            ]
            try:
                s3_objects.delete(hook, self.payload_bucket, [*tries, result_key])
            except Exception as error:  # the outcome matters more than the objects
                self.log.warning("could not delete the payload and result of job %s: %s", job_id, error)
        return f"s3://{self.payload_bucket}/{result_key}", document

    def result_referencer(self, document: ResultDocument) -> Referencer:
        return s3_objects.referencer(document, self.aws_conn_id)

    def job_label(self, job_id: str) -> str:
        return f"AWS Batch job {job_id}"
