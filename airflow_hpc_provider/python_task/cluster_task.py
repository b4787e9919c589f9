"""A Python function as a job on an SSH-reached cluster: what ``@task.slurm`` and ``@task.pbs`` add.

:class:`ClusterPythonJob` sits in front of an operator of :mod:`~airflow_hpc_provider.operators.ssh_batch`
and changes only what is submitted and what the end means; the operator's own flow (submit or adopt
an earlier try's live job, defer, stream the output into the task log, cancel) runs unchanged.

Before submission (``execute``, on the worker), in this order, so each failure submits nothing:

1. serialize the call (an argument that cannot be pickled is named);
2. ask the job's Python, after the task's ``setup`` lines, for its version and its cloudpickle (a
   major.minor that differs from the worker's fails at once, naming both);
3. store a payload past the inline limit in the job's directory, else keep it in the script;
4. make the job's command the bootstrap reading its manifest.

After the job ended (``execute_complete``, shared with ``@task.batch`` in
:mod:`~airflow_hpc_provider.python_task.remote_call`): read the result document the job wrote (it
is named by the job's id, so a retry that adopted an earlier try's job finds it), turn it into the
return value or the remote exception with its traceback, then delete what was read (``cleanup``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import Context

from airflow_hpc_provider.errors import RemoteCommandError
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.hooks.worker_link import on_cluster
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.operators.base import HpcOperator
from airflow_hpc_provider.operators.ssh_batch import SshBatchJobOperator
from airflow_hpc_provider.operators.ssh_cluster import ClusterSettings
from airflow_hpc_provider.python_task import cluster_files, cluster_io
from airflow_hpc_provider.python_task.cleanup import CleanupPolicy, locations_to_delete
from airflow_hpc_provider.python_task.codec import CLUSTER_INLINE_LIMIT_BYTES, encode_body
from airflow_hpc_provider.python_task.launch import cluster_command
from airflow_hpc_provider.python_task.manifest import FileBody, FileResultTarget, InlineBody, PayloadManifest
from airflow_hpc_provider.python_task.preflight import check_remote_python, probe_remote_python
from airflow_hpc_provider.python_task.remote_call import RemotePythonCall
from airflow_hpc_provider.python_task.results import Referencer, ResultDocument
from airflow_hpc_provider.python_task.serializer import SerializedCall, load_serializer


def python_job_template_fields(operator: type[HpcOperator]) -> tuple[str, ...]:
    """The decorated function's arguments, then the operator's fields but the command it builds itself."""
    return ("op_args", "op_kwargs", *(name for name in operator.template_fields if name not in ("command", "script")))


class ClusterPythonJob(RemotePythonCall, SshBatchJobOperator):
    """Mixin: run ``python_callable(*op_args, **op_kwargs)`` as the job (see the module docstring).

    :param python: the interpreter on the cluster (a name on PATH or a path); modules and venvs go
        in ``setup``, which runs before it, in the job and in the version check.
    :param cleanup: ``"delete"`` (default): the stored payload and the result document are deleted
        once read; ``"keep"``: both stay. Values that stayed on the cluster are never deleted.
    :param result_inline_limit_bytes: a returned value (each key's with ``multiple_outputs``) larger
        than this, pickled, stays on the cluster and XCom holds a reference to it.
    :param check_python: ask the job's Python for its version before submitting (one SSH command).
    """

    # Each call's payload is written on the worker before its job is submitted.
    supports_arrays: ClassVar[bool] = False

    def __init__(self, *, check_python: bool = True, **kwargs: Any) -> None:
        self.check_python = bool(check_python)
        super().__init__(**kwargs)

    # -- before submission -------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        cluster = self.cluster()
        call = self.serialized_call()
        key = self.job_key(context)
        # The probe and the payload go over the connection the submission then uses.
        self.command = on_cluster(cluster.target, lambda transport: self._prepare(transport, cluster, key, call))
        return super().execute(context)

    async def _prepare(
        self, transport: SshTransport, cluster: ClusterSettings, key: JobKey, call: SerializedCall
    ) -> str:
        if self.check_python:
            remote = await probe_remote_python(transport, self.python, self.setup)
            warnings = check_remote_python(remote, where=transport.target.where, serializer=load_serializer())
            for warning in warnings:
                self.log.warning("%s", warning)
            self.log.info(
                "The job's Python on %s: %s (%s), cloudpickle %s",
                cluster.conn_id,
                remote.version,
                remote.executable,
                remote.cloudpickle_version,
            )
        body = encode_body(call.data)
        if body.fits_inline(CLUSTER_INLINE_LIMIT_BYTES):
            where: InlineBody | FileBody = InlineBody(body)
            self.log.info("Payload: %d bytes (%s), in the job script", len(body.data), body.compression.value)
        else:
            path = cluster_files.payload_path(cluster.log_dir, key)
            await cluster_io.upload_payload(transport, path, body)
            where = FileBody(path, body)
            self.log.info("Payload: %d bytes (%s), stored in %s", len(body.data), body.compression.value, path)
        manifest = PayloadManifest.for_call(
            call,
            where,
            FileResultTarget(cluster_files.result_template(cluster.log_dir, key, self.scheduler.lower())),
            multiple_outputs=bool(self.multiple_outputs),
            result_inline_limit_bytes=self.result_inline_limit_bytes,
        )
        return cluster_command(self.python, manifest)

    def script_for_log(self, batch_script: str) -> str:
        # The bootstrap (400 lines) and an inline payload (up to 64 KiB of base64) say nothing to a reader.
        name = self.callable_name()
        if not self.command:
            return batch_script
        return batch_script.replace(
            self.command, f"{self.python} - <<...  (the bootstrap running {name}(); not shown)\n"
        )

    # -- after the job ended -----------------------------------------------------------------------

    def fetch_result(self, context: Context, job_id: str, *, read: bool) -> tuple[str, bytes | None]:
        return on_cluster(
            self.cluster().target, lambda transport: self._read_and_clean(transport, context, job_id, read=read)
        )

    def result_referencer(self, document: ResultDocument) -> Referencer:
        return cluster_files.referencer(document, self.conn_id)

    def job_label(self, job_id: str) -> str:
        return f"{self.scheduler} job {job_id}"

    async def _read_and_clean(
        self, transport: SshTransport, context: Context, job_id: str, *, read: bool
    ) -> tuple[str, bytes | None]:
        cluster = self.cluster()
        key = self.job_key(context)
        path = cluster_files.result_path(cluster.log_dir, key, self.scheduler.lower(), job_id)
        document = await cluster_io.read_result(transport, path) if read else None
        try:
            await cluster_io.delete_files(
                transport,
                locations_to_delete(self.cleanup, None, path),
                payloads_of=(cluster.log_dir, key) if self.cleanup is CleanupPolicy.DELETE else None,
            )
        except RemoteCommandError as error:  # the outcome matters more than the files
            self.log.warning("could not delete the payload and result of job %s: %s", job_id, error)
        return path, document
