"""Python functions as Slurm jobs, end to end below the decorators: real sbatch over real sshd, the
cluster's own /usr/bin/python3 with only cloudpickle (pip --user, tests/cluster/up.sh), no Airflow.

Each test does what a ``@task.slurm`` will: ask the remote Python for its version, serialize the
call, store a large payload in the job's directory, submit a job whose script runs the bootstrap,
wait for the job's end, read the result document back and delete what the task has read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.errors import (
    PayloadSerializationError,
    RemoteFunctionError,
    RemotePythonError,
    RemoteResultError,
)
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR, SlurmHook, submit_job
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec, Resources
from airflow_hpc_provider.python_task import cluster_files, cluster_io
from airflow_hpc_provider.python_task.cleanup import CleanupPolicy, locations_to_delete
from airflow_hpc_provider.python_task.codec import CLUSTER_INLINE_LIMIT_BYTES, encode_body
from airflow_hpc_provider.python_task.launch import cluster_command
from airflow_hpc_provider.python_task.manifest import (
    DEFAULT_RESULT_INLINE_LIMIT_BYTES,
    FileBody,
    FileResultTarget,
    InlineBody,
    PayloadManifest,
)
from airflow_hpc_provider.python_task.preflight import check_remote_python, probe_remote_python
from airflow_hpc_provider.python_task.results import RemoteResult, ResultDocument, return_value
from airflow_hpc_provider.python_task.serializer import PythonVersion, load_serializer, serialize_call
from tests.integration import cluster

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]

# The job's environment holds no Airflow: PATH has only the system's directories, PYTHONPATH is unset,
# and the interpreter is the cluster's own.
NO_AIRFLOW = ("export PATH=/usr/bin:/bin", "unset PYTHONPATH VIRTUAL_ENV")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


@dataclasses.dataclass(frozen=True)
class SubmittedCall:
    job_id: str
    key: JobKey
    payload_path: str | None
    result_path: str
    log_path: str
    manifest: PayloadManifest


async def submit_call(
    conn_id: str,
    function: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    key: JobKey | None = None,
    multiple_outputs: bool = False,
    setup: Sequence[str] = NO_AIRFLOW,
    python: str = "python3",
    worker_python: PythonVersion | None = None,
    result_inline_limit_bytes: int = DEFAULT_RESULT_INLINE_LIMIT_BYTES,
    preflight: bool = True,
    recorded_python: PythonVersion | None = None,
) -> SubmittedCall:
    """What a @task.slurm does before it defers: check, serialize, store, submit (in that order)."""
    key = key or JobKey.for_task_instance("python_runner", function.__name__, uuid.uuid4().hex, -1, 1)
    transport = SshTransport(SlurmHook(conn_id).get_target())
    try:
        if preflight:
            remote = await probe_remote_python(transport, python, setup)
            check_remote_python(remote, where=transport.target.where, serializer=load_serializer(), local=worker_python)
        call = serialize_call(function, args, kwargs)
        body = encode_body(call.data)
        payload_path = None
        if body.fits_inline(CLUSTER_INLINE_LIMIT_BYTES):
            where: InlineBody | FileBody = InlineBody(body)
        else:
            payload_path = cluster_files.payload_path(DEFAULT_LOG_DIR, key)
            await cluster_io.upload_payload(transport, payload_path, body)
            where = FileBody(payload_path, body)
        manifest = PayloadManifest.for_call(
            call,
            where,
            FileResultTarget(cluster_files.result_template(DEFAULT_LOG_DIR, key, "slurm")),
            multiple_outputs=multiple_outputs,
            result_inline_limit_bytes=result_inline_limit_bytes,
        )
        if recorded_python is not None:
            manifest = dataclasses.replace(manifest, python=recorded_python)
        spec = JobSpec(
            command=cluster_command(python, manifest),
            job_name="python-runner",
            setup=tuple(setup),
            resources=Resources(time_limit=timedelta(minutes=5)),
        )
        outcome = await submit_job(transport, spec, slurm.render_script(spec), key=key, log_dir=DEFAULT_LOG_DIR, env={})
    finally:
        await transport.close()
    assert outcome.job_id is not None and not outcome.adopted
    return SubmittedCall(
        job_id=outcome.job_id,
        key=key,
        payload_path=payload_path,
        result_path=cluster_files.result_path(DEFAULT_LOG_DIR, key, "slurm", outcome.job_id),
        log_path=slurm.log_path(DEFAULT_LOG_DIR, key, outcome.job_id),
        manifest=manifest,
    )


async def wait_for_end(submitted: SubmittedCall, timeout_s: float = 120) -> str:
    return await asyncio.to_thread(cluster.wait_for, submitted.job_id, ENDED, timeout_s)


async def read_outcome(conn_id: str, submitted: SubmittedCall, *, cleanup: CleanupPolicy = CleanupPolicy.DELETE) -> Any:
    """What the task does once the job ended: read the result, then delete what it read."""
    transport = SshTransport(SlurmHook(conn_id).get_target())
    try:
        text = await cluster_io.read_result(transport, submitted.result_path)
        try:
            if text is None:
                raise RemoteResultError(f"job {submitted.job_id} wrote no result", None)
            document = ResultDocument.parse(text, submitted.result_path)
            return return_value(
                document,
                serializer=load_serializer(),
                multiple_outputs=submitted.manifest.multiple_outputs,
                reference=cluster_files.referencer(document, conn_id),
            )
        finally:
            await cluster_io.delete_files(
                transport, locations_to_delete(cleanup, submitted.payload_path, submitted.result_path)
            )
    finally:
        await transport.close()


def remote_exists(path: str) -> bool:
    return cluster.ssh(f"test -e {path} && echo yes || echo no").strip() == "yes"


def no_job_with_key(key: JobKey) -> bool:
    return not cluster.jobs_with_comment_prefix(f"{JobKey.PREFIX}:{key.task_digest}:")


# --- the functions the jobs run (pickled by value: this module does not exist on the cluster) --------


def describe_environment(a: int, b: int) -> dict[str, Any]:
    import importlib.util
    import os
    import sys

    return {
        "sum": a + b,
        "airflow_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("airflow", "airflow_hpc_provider")),
        "airflow_importable": importlib.util.find_spec("airflow") is not None,
        "provider_importable": importlib.util.find_spec("airflow_hpc_provider") is not None,
        "executable": sys.executable,
        "path": os.environ.get("PATH"),
        "pythonpath": os.environ.get("PYTHONPATH"),
    }


def digest_and_reverse(data: bytes) -> dict[str, Any]:
    import hashlib

    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "reversed": data[::-1]}


def check_input(value: int) -> int:
    if value > 10:
        raise ValueError(f"bad input {value}: at most 10")
    return value


def validate(value: int) -> int:
    return check_input(value) * 2


def print_lines(count: int, release: str) -> int:
    import os
    import time

    for number in range(count):
        print(f"line {number}")
    deadline = time.monotonic() + 120
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


# --- the tests -------------------------------------------------------------------------------------------


async def test_a_function_returning_a_dict_gives_its_keys_as_outputs_and_runs_without_airflow(
    slurm_connection: str,
) -> None:
    submitted = await submit_call(slurm_connection, describe_environment, (40,), {"b": 2}, multiple_outputs=True)
    assert await wait_for_end(submitted) == "COMPLETED"
    outputs = await read_outcome(slurm_connection, submitted)
    assert outputs["sum"] == 42
    # The proof that no Airflow was there: none imported, none importable, the cluster's own python3.
    assert outputs["airflow_modules"] == []
    assert outputs["airflow_importable"] is False and outputs["provider_importable"] is False
    assert outputs["executable"] == "/usr/bin/python3"
    assert outputs["path"] == "/usr/bin:/bin" and outputs["pythonpath"] is None
    assert set(outputs) == {
        "sum",
        "airflow_modules",
        "airflow_importable",
        "provider_importable",
        "executable",
        "path",
        "pythonpath",
    }
    assert not remote_exists(submitted.result_path)  # read, then deleted


async def test_a_1_MB_argument_travels_as_a_file_and_a_1_MB_result_stays_on_the_cluster_behind_a_reference(
    slurm_connection: str,
) -> None:
    data = os.urandom(1_000_000)
    submitted = await submit_call(
        slurm_connection, digest_and_reverse, (data,), multiple_outputs=True, result_inline_limit_bytes=64 * 1024
    )
    assert isinstance(submitted.manifest.body, FileBody)
    assert submitted.payload_path is not None and remote_exists(submitted.payload_path)
    # Not in the job script: only the manifest naming the file (the bootstrap is most of it).
    script = cluster.ssh(f"scontrol write batch_script {submitted.job_id} -")
    assert len(script) < 40_000 and submitted.payload_path.rsplit("/", 1)[1] in script
    assert await wait_for_end(submitted) == "COMPLETED"

    outputs = await read_outcome(slurm_connection, submitted)
    assert outputs["sha256"] == hashlib.sha256(data).hexdigest() and outputs["size"] == 1_000_000
    reference = RemoteResult.from_xcom(outputs["reversed"])
    assert reference is not None and reference.backend == "cluster" and reference.conn_id == slurm_connection
    assert reference.size_bytes > 1_000_000 and reference.type_name == "bytes"
    transport = SshTransport(SlurmHook(slurm_connection).get_target())
    try:
        stored = await cluster_io.load_stored(transport, reference)
    finally:
        await transport.close()
    assert reference.decode(stored, load_serializer()) == data[::-1]
    # The payload and the result document are gone; the value XCom points at is kept.
    assert not remote_exists(submitted.payload_path) and not remote_exists(submitted.result_path)
    assert remote_exists(reference.location)
    cluster.ssh(f"rm -f {reference.location}")


async def test_a_raised_exception_fails_the_job_and_brings_back_the_remote_traceback(slurm_connection: str) -> None:
    submitted = await submit_call(slurm_connection, validate, (42,))
    assert await wait_for_end(submitted) == "FAILED"
    assert cluster.sacct_row(submitted.job_id, "State,ExitCode") == ["FAILED", "1:0"]
    with pytest.raises(RemoteFunctionError) as caught:
        await read_outcome(slurm_connection, submitted)
    message = str(caught.value)
    assert message.startswith("the function raised ValueError: bad input 42: at most 10\n\nRemote traceback:\n")
    assert "in validate" in message and "in check_input" in message
    assert "remote_bootstrap" not in message and "in run" not in message  # the bootstrap's own frame is left out
    # The job's output (what the task log streams) has the traceback too.
    log = cluster.ssh(f"cat {submitted.log_path}")
    assert "ValueError: bad input 42: at most 10" in log and "in check_input" in log


async def test_a_function_printing_1000_lines_has_each_line_once_in_the_job_output_while_it_runs(
    slurm_connection: str,
) -> None:
    release = f".airflow-hpc/release-{uuid.uuid4().hex}"
    submitted = await submit_call(slurm_connection, print_lines, (1000, release))

    def lines_while_running() -> int:
        for _ in range(240):
            # The count first, then the state: a state read before the count could be from before
            # the job started (the job then holds on until the test releases it).
            count = int(cluster.ssh(f"cat {submitted.log_path} 2>/dev/null | wc -l").strip() or 0)
            state = cluster.ssh(f"squeue -h -j {submitted.job_id} -o %T", check=False).strip()
            if count >= 1000:
                assert state == "RUNNING", f"all lines only showed once the job was {state!r}"
                return count
            assert state in ("PENDING", "CONFIGURING", "RUNNING"), state
            threading.Event().wait(0.5)
        raise AssertionError("the lines never reached the job's output while it ran")

    try:
        assert await asyncio.to_thread(lines_while_running) == 1000  # line-buffered: none held back
    finally:
        cluster.ssh(f"touch {release}")
    assert await wait_for_end(submitted) == "COMPLETED"
    assert await read_outcome(slurm_connection, submitted) == 1000
    lines = cluster.ssh(f"cat {submitted.log_path}").splitlines()
    assert lines == [f"line {number}" for number in range(1000)]
    cluster.ssh(f"rm -f {release}")


async def test_an_unpicklable_argument_fails_on_the_worker_and_submits_nothing(slurm_connection: str) -> None:
    key = JobKey.for_task_instance("python_runner", "unpicklable", uuid.uuid4().hex, -1, 1)
    with pytest.raises(PayloadSerializationError) as caught:
        await submit_call(slurm_connection, check_input, (), {"value": threading.Lock()}, key=key)
    assert str(caught.value).startswith("cannot serialize argument 'value' (_thread.lock) with cloudpickle")
    assert no_job_with_key(key)
    assert not remote_exists(cluster_files.payload_path(DEFAULT_LOG_DIR, key))


async def test_a_python_version_mismatch_fails_before_submission_naming_both_versions(slurm_connection: str) -> None:
    key = JobKey.for_task_instance("python_runner", "mismatch", uuid.uuid4().hex, -1, 1)
    remote = cluster.ssh("/usr/bin/python3 -c 'import platform; print(platform.python_version())'").strip()
    with pytest.raises(RemotePythonError) as caught:
        await submit_call(slurm_connection, check_input, (1,), key=key, worker_python=PythonVersion(3, 12, 1))
    assert str(caught.value).startswith(
        f"the job's Python on hpcuser@127.0.0.1:2222 (connection {slurm_connection}) is {remote} (/usr/bin/python3), "
        "the Airflow worker's is 3.12.1"
    )
    assert no_job_with_key(key)


async def test_a_job_whose_python_differs_from_the_payloads_stops_at_start_naming_both_versions(
    slurm_connection: str,
) -> None:
    # The pre-flight check passed, then the job met another Python (a compute node unlike the login node).
    submitted = await submit_call(slurm_connection, check_input, (1,), recorded_python=PythonVersion(3, 12, 1))
    assert await wait_for_end(submitted) == "FAILED"
    assert cluster.sacct_row(submitted.job_id, "State,ExitCode") == ["FAILED", "3:0"]
    with pytest.raises(RemoteResultError) as caught:
        await read_outcome(slurm_connection, submitted)
    assert "the payload was serialized by Python 3.12.1 on the Airflow worker; this is Python 3.11" in str(caught.value)
    assert "(/usr/bin/python3)" in str(caught.value)


async def test_a_cluster_python_without_cloudpickle_is_refused_before_submission_and_a_job_meeting_one_says_so(
    slurm_connection: str,
) -> None:
    hidden = (*NO_AIRFLOW, "export PYTHONNOUSERSITE=1")  # cloudpickle is in ~/.local: now out of sight
    key = JobKey.for_task_instance("python_runner", "no_cloudpickle", uuid.uuid4().hex, -1, 1)
    with pytest.raises(RemotePythonError, match=r"cloudpickle is not installed for /usr/bin/python3 \(Python 3\.11"):
        await submit_call(slurm_connection, check_input, (1,), key=key, setup=hidden)
    assert no_job_with_key(key)

    submitted = await submit_call(slurm_connection, check_input, (1,), setup=hidden, preflight=False)
    assert await wait_for_end(submitted) == "FAILED"
    with pytest.raises(RemoteResultError) as caught:
        await read_outcome(slurm_connection, submitted)
    message = str(caught.value)
    assert "cloudpickle is not installed for Python 3.11" in message and "(/usr/bin/python3)" in message
    assert "'/usr/bin/python3 -m pip install --user cloudpickle==" in message
