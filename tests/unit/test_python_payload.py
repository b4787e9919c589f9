"""Python functions as jobs, on the worker's side: the codec's edges, serialization errors, the manifest,
the job's command, the result document, and the scripts for the cluster's files."""

from __future__ import annotations

import ast
import base64
import gzip
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from airflow_hpc_provider.errors import (
    JobSpecError,
    PayloadSerializationError,
    RemoteFunctionError,
    RemotePythonError,
    RemoteResultError,
    SerializerUnavailableError,
)
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.python_task import cluster_files, launch, preflight
from airflow_hpc_provider.python_task.cleanup import CleanupPolicy, locations_to_delete
from airflow_hpc_provider.python_task.codec import (
    BATCH_INLINE_LIMIT_BYTES,
    CLUSTER_INLINE_LIMIT_BYTES,
    GZIP_THRESHOLD_BYTES,
    Compression,
    EncodedBody,
    decode_body,
    encode_body,
)
from airflow_hpc_provider.python_task.manifest import (
    FileResultTarget,
    InlineBody,
    PayloadManifest,
    check_template,
    fill_template,
)
from airflow_hpc_provider.python_task.results import RemoteResult, ResultDocument, return_value
from airflow_hpc_provider.python_task.serializer import (
    PythonVersion,
    check_serializer_name,
    load_serializer,
    serialize_call,
)

KEY = JobKey(task_digest="0123456789abcdef0123", try_number=2)


def incompressible(size: int) -> bytes:
    return os.urandom(size)


# --- the codec, at its edges ---------------------------------------------------------------------


def test_a_pickle_of_exactly_4_KiB_travels_uncompressed() -> None:
    body = encode_body(b"a" * GZIP_THRESHOLD_BYTES)
    assert body.compression is Compression.NONE
    assert body.data == b"a" * 4096


def test_a_pickle_one_byte_past_4_KiB_is_gzip_compressed_and_decodes_back() -> None:
    raw = b"a" * (GZIP_THRESHOLD_BYTES + 1)
    body = encode_body(raw)
    assert body.compression is Compression.GZIP
    assert len(body.data) < 100
    assert gzip.decompress(body.data) == raw == decode_body(body.compression, body.data)


def test_the_same_pickle_always_compresses_to_the_same_bytes() -> None:
    raw = b"payload " * 2000
    assert encode_body(raw).data == encode_body(raw).data


def test_a_body_whose_base64_text_is_exactly_the_inline_limit_travels_inline_and_one_more_byte_does_not() -> None:
    for limit in (CLUSTER_INLINE_LIMIT_BYTES, BATCH_INLINE_LIMIT_BYTES):
        at_limit = EncodedBody(Compression.NONE, incompressible(limit // 4 * 3), 0)
        assert len(at_limit.inline_text) == at_limit.inline_size == limit
        assert at_limit.fits_inline(limit)
        over = EncodedBody(Compression.NONE, incompressible(limit // 4 * 3 + 1), 0)
        assert len(over.inline_text) == over.inline_size == limit + 4  # base64 grows in steps of 4
        assert not over.fits_inline(limit)
        assert not over.fits_inline(limit + 3)
        assert over.fits_inline(limit + 4)


def test_an_incompressible_pickle_past_the_cluster_limit_is_stored_and_a_compressible_one_is_not() -> None:
    assert not encode_body(incompressible(CLUSTER_INLINE_LIMIT_BYTES)).fits_inline(CLUSTER_INLINE_LIMIT_BYTES)
    assert encode_body(b"x" * 10 * CLUSTER_INLINE_LIMIT_BYTES).fits_inline(CLUSTER_INLINE_LIMIT_BYTES)


# --- serializing the call ---------------------------------------------------------------------------


def add(a: int, b: int = 0) -> int:
    return a + b


def test_an_unpicklable_keyword_argument_is_named_with_its_type() -> None:
    with pytest.raises(PayloadSerializationError) as caught:
        serialize_call(add, (1,), {"b": 2, "lock": threading.Lock()})
    message = str(caught.value)
    assert caught.value.culprit == "argument 'lock' (_thread.lock)"
    assert message.startswith("cannot serialize argument 'lock' (_thread.lock) with cloudpickle: TypeError:")
    assert "nothing was submitted" in message
    assert isinstance(caught.value, JobSpecError)  # final: no retry can pickle it


def test_an_unpicklable_positional_argument_and_an_unpicklable_closure_are_named() -> None:
    with pytest.raises(PayloadSerializationError, match=r"positional argument 1 \(_thread\.RLock\)"):
        serialize_call(add, (1, threading.RLock()))
    lock = threading.Lock()

    def holds_a_lock() -> bool:
        return lock.locked()

    with pytest.raises(PayloadSerializationError, match=r"the function .*holds_a_lock \(function\)"):
        serialize_call(holds_a_lock)


def test_a_function_of_a_module_that_is_not_installed_travels_by_value() -> None:
    call = serialize_call(add, (2,), {"b": 3})
    # A fresh interpreter that cannot import the tests package (isolated mode, another directory).
    program = (
        "import sys, pickle; call = pickle.loads(sys.stdin.buffer.read()); "
        "import importlib.util; assert importlib.util.find_spec('tests') is None; "
        "print(call['function'](*call['args'], **call['kwargs']))"
    )
    answer = subprocess.run(
        [sys.executable, "-I", "-c", program], input=call.data, capture_output=True, cwd="/", check=True
    )
    assert answer.stdout.strip() == b"5"
    assert call.python == PythonVersion.current()
    assert call.serializer == "cloudpickle"


def test_serializers_that_send_functions_by_reference_are_refused_with_the_reason() -> None:
    assert check_serializer_name("cloudpickle") == "cloudpickle"
    with pytest.raises(JobSpecError, match=r"serializer='pickle' cannot ship a function.*by reference"):
        check_serializer_name("pickle")
    with pytest.raises(JobSpecError, match="serializer='dill' cannot ship"):
        check_serializer_name("dill")
    with pytest.raises(JobSpecError, match=r"Unsupported serializer 'json'\. Expected one of 'pickle', 'cloudpickle'"):
        check_serializer_name("json")


def test_a_worker_without_cloudpickle_is_told_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # what Python does for a module that is absent
    with pytest.raises(SerializerUnavailableError, match=r"pip install 'airflow-hpc-provider\[cloudpickle\]'"):
        load_serializer()


def test_python_versions_parse_and_compare_by_major_minor() -> None:
    assert PythonVersion.parse("3.11.2") == PythonVersion(3, 11, 2)
    assert PythonVersion.parse("3.12").same_minor(PythonVersion(3, 12, 7))
    assert not PythonVersion(3, 11, 2).same_minor(PythonVersion(3, 12, 2))
    with pytest.raises(ValueError, match="not a Python version"):
        PythonVersion.parse("3.x")


# --- the manifest and the job's command ---------------------------------------------------------------


def manifest_for(
    function: Any, *args: Any, result: str = "res/{SLURM_JOB_ID}.result", **kwargs: Any
) -> PayloadManifest:
    call = serialize_call(function, args, kwargs)
    return PayloadManifest.for_call(call, InlineBody(encode_body(call.data)), FileResultTarget(result))


def test_the_cluster_command_carries_the_payload_only_inside_its_quoted_heredoc() -> None:
    manifest = manifest_for(add, 1, b=2)
    command = launch.cluster_command("python3", manifest)
    first, _, rest = command.partition("\n")
    delimiter = first.split("<<'", 1)[1].rstrip("'")
    assert first == f"python3 - <<'{delimiter}'"
    assert command.endswith(f"\n{delimiter}\n")
    payload_text = json.loads(manifest.to_json())["body"]["text"]
    assert payload_text not in first and payload_text in rest
    assert "AIRFLOW_HPC_MANIFEST = " in rest.splitlines()[0]


def test_the_cluster_command_runs_the_call_and_writes_its_result(tmp_path: Path) -> None:
    manifest = manifest_for(add, 40, result=str(tmp_path / "{SLURM_JOB_ID}.result"), b=2)
    command = launch.cluster_command(sys.executable, manifest)
    done = subprocess.run(["sh", "-c", command], env={**os.environ, "SLURM_JOB_ID": "77"}, capture_output=True)
    assert done.returncode == 0, done.stderr
    document = ResultDocument.parse((tmp_path / "77.result").read_bytes(), "here")
    assert return_value(document, serializer=load_serializer(), multiple_outputs=False, reference=_no_refs) == 42


def test_the_batch_command_holds_no_payload_and_the_environment_holds_the_manifest(tmp_path: Path) -> None:
    manifest = manifest_for(add, 1, result=str(tmp_path / "{AWS_BATCH_JOB_ID}.result"), b=1)
    command = launch.batch_command("python3")
    assert command[:2] == ["python3", "-c"]
    assert json.loads(manifest.to_json())["body"]["text"] not in command[2]
    env = launch.batch_environment(manifest)
    assert list(env) == ["AIRFLOW_HPC_PAYLOAD"]
    done = subprocess.run(
        [sys.executable, *command[1:]],
        env={**os.environ, **env, "AWS_BATCH_JOB_ID": "job-1"},
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    document = ResultDocument.parse((tmp_path / "job-1.result").read_bytes(), "here")
    assert return_value(document, serializer=load_serializer(), multiple_outputs=False, reference=_no_refs) == 2
    assert len(command[2]) < 6 * 1024  # its share of the 30 KiB a SubmitJob request may hold


def test_the_python_command_is_one_interpreter() -> None:
    assert launch.cluster_command("/opt/my env/bin/python", manifest_for(add, 1)).startswith(
        "'/opt/my env/bin/python' -"
    )
    for bad in ("", "python3\nrm -rf ~", "   "):
        with pytest.raises(ValueError, match="give one interpreter"):
            launch.check_python_command(bad)


def test_the_bootstrap_starts_on_python_3_6_far_enough_to_name_the_version() -> None:
    source = launch.bootstrap_source()
    tree = ast.parse(source, feature_version=(3, 6))
    # Annotations are evaluated at definition time before 3.10 (no __future__ import there):
    # dict[...] (3.9+) and X | Y (3.10+) would fail before the version check could speak.
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            annotations = [arg.annotation for arg in node.args.args if arg.annotation] + [node.returns]
            for annotation in filter(None, annotations):
                text = ast.unparse(annotation)
                assert "|" not in text and not text.startswith(("dict[", "list[", "tuple[", "type[")), text
    assert "import airflow" not in source and "airflow_hpc_provider" not in source
    compact = launch.compact_source()
    compile(compact, "compact", "exec")
    assert len(compact) < len(source)


def test_location_templates_name_only_job_variables() -> None:
    allowed = frozenset({"SLURM_JOB_ID"})
    assert fill_template(check_template("d/{SLURM_JOB_ID}.result", allowed), {"SLURM_JOB_ID": "12"}) == "d/12.result"
    with pytest.raises(ValueError, match=r"names \$HOME"):
        check_template("{HOME}/x", allowed)
    with pytest.raises(ValueError, match="brace"):
        check_template("d/{x.result", allowed)


# --- the result document ---------------------------------------------------------------------------


def _no_refs(record: Any, stored: Any) -> RemoteResult:
    raise AssertionError("nothing should have stayed remote")


def document(**fields: Any) -> ResultDocument:
    base = {"format": 1, "status": "returned", "exit_status": 0, "python": "3.11.2", "executable": "/usr/bin/python3"}
    return ResultDocument.parse(json.dumps({**base, "serializer": "cloudpickle", **fields}), "test")


def record(value: Any) -> dict[str, Any]:
    data = load_serializer().dumps(value)
    import hashlib

    return {
        "type": type(value).__name__,
        "size": len(data),
        "compression": "none",
        "sha256": hashlib.sha256(data).hexdigest(),
        "inline": base64.b64encode(data).decode(),
    }


def test_multiple_outputs_come_back_as_the_dict_airflow_splits_into_xcoms() -> None:
    doc = document(values={"a": record(1), "b": record([2, 3])})
    assert return_value(doc, serializer=load_serializer(), multiple_outputs=True, reference=_no_refs) == {
        "a": 1,
        "b": [2, 3],
    }


def test_multiple_outputs_of_a_value_that_is_no_dict_fail_with_airflows_words() -> None:
    doc = document(
        value=record([1]),
        multiple_outputs_error="Returned output was type <class 'list'> expected dictionary for multiple_outputs",
    )
    with pytest.raises(TypeError, match=r"^Returned output was type <class 'list'> expected dictionary"):
        return_value(doc, serializer=load_serializer(), multiple_outputs=True, reference=_no_refs)


def test_a_raised_exception_comes_back_with_its_remote_traceback() -> None:
    doc = document(
        status="raised",
        exit_status=1,
        error={"type": "ValueError", "message": "bad", "traceback": 'File "dag.py", line 3, in f\nValueError: bad\n'},
    )
    with pytest.raises(RemoteFunctionError) as caught:
        return_value(doc, serializer=load_serializer(), multiple_outputs=False, reference=_no_refs)
    assert str(caught.value) == (
        'the function raised ValueError: bad\n\nRemote traceback:\nFile "dag.py", line 3, in f\nValueError: bad'
    )


def test_a_job_that_could_not_run_the_function_says_why_and_where() -> None:
    doc = document(status="unusable", exit_status=3, message="cloudpickle is not installed")
    with pytest.raises(
        RemoteResultError, match=r"\(/usr/bin/python3, 3\.11\.2\) could not run the function: cloudpickle"
    ):
        return_value(doc, serializer=load_serializer(), multiple_outputs=False, reference=_no_refs)


def test_an_inline_value_that_is_not_what_was_written_is_refused() -> None:
    changed = {**record(5), "inline": base64.b64encode(load_serializer().dumps(6)).decode()}
    with pytest.raises(RemoteResultError, match="SHA-256"):
        return_value(document(value=changed), serializer=load_serializer(), multiple_outputs=False, reference=_no_refs)


def test_a_remote_result_reference_survives_xcom_as_plain_json() -> None:
    ref = RemoteResult("s3", "s3://b/k", "aws_default", 10, "ab", "gzip", "bytes", "cloudpickle", "3.11.2")
    assert RemoteResult.from_xcom(json.loads(json.dumps(ref.to_xcom()))) == ref
    assert RemoteResult.from_xcom({"a": 1}) is None
    assert RemoteResult.from_xcom(3) is None


def test_an_unreadable_result_document_is_a_clear_error() -> None:
    with pytest.raises(RemoteResultError, match="the result at /r cannot be read"):
        ResultDocument.parse("not json", "/r")
    with pytest.raises(RemoteResultError, match="format 2, this worker reads 1"):
        ResultDocument.parse('{"format": 2}', "/r")


# --- the cluster's files and the cleanup policy -------------------------------------------------------


def test_the_upload_script_writes_the_payload_whole_under_home(tmp_path: Path) -> None:
    body = encode_body(incompressible(100_000))
    path = "logs dir/it's/" + Path(cluster_files.payload_path(".airflow-hpc", KEY)).name
    script = cluster_files.upload_script(path, body)
    done = subprocess.run(
        ["sh", "-s"],
        input=script.encode(),
        env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    assert cluster_files.parse_upload(done.stdout.decode()) == len(body.data)
    stored = tmp_path / path
    assert stored.read_bytes() == body.data
    assert oct(stored.stat().st_mode & 0o777) == "0o600"
    assert body.inline_text[:1000] not in script.splitlines()[0]


def test_the_result_read_and_cleanup_scripts_find_and_remove_the_files(tmp_path: Path) -> None:
    result = cluster_files.result_path("logs", KEY, "slurm", "123")
    assert result == f"logs/{KEY.task_digest}-123.result"
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}

    def run(script: str) -> bytes:
        return subprocess.run(["sh", "-s"], input=script.encode(), env=env, capture_output=True, check=True).stdout

    assert cluster_files.parse_read_result(run(cluster_files.read_result_script(result))).document is None
    (tmp_path / "logs").mkdir()
    (tmp_path / result).write_text('{"format": 1}')
    assert cluster_files.parse_read_result(run(cluster_files.read_result_script(result))).document == b'{"format": 1}'
    run(cluster_files.cleanup_script(locations_to_delete(CleanupPolicy.DELETE, None, result)))
    assert not (tmp_path / result).exists()


def test_the_cleanup_deletes_the_stored_payloads_of_every_try_of_the_task_and_of_no_other(tmp_path: Path) -> None:
    # A retry that adopted try 1's job ran try 1's payload and stored its own: both go once read.
    log_dir = "logs dir/it's"
    retry = JobKey(KEY.task_digest, 2)
    other = JobKey("0" * 20, 1)
    paths = [cluster_files.payload_path(log_dir, key) for key in (KEY, retry, other)]
    (tmp_path / log_dir).mkdir(parents=True)
    for path in paths:
        (tmp_path / path).write_bytes(b"payload")
    script = cluster_files.cleanup_script([], payloads_of=(log_dir, retry))
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    subprocess.run(["sh", "-s"], input=script.encode(), env=env, check=True)
    assert [(tmp_path / path).exists() for path in paths] == [False, False, True]
    # Nothing left to match is no error either.
    subprocess.run(["sh", "-s"], input=script.encode(), env=env, check=True)


def test_the_cleanup_policy_keeps_everything_or_deletes_payload_and_result() -> None:
    assert locations_to_delete(CleanupPolicy.parse("delete"), "p", "r") == ("p", "r")
    assert locations_to_delete(CleanupPolicy.DELETE, None, "r") == ("r",)
    assert locations_to_delete(CleanupPolicy.parse("keep"), "p", "r") == ()
    with pytest.raises(ValueError, match="cleanup='never'"):
        CleanupPolicy.parse("never")


# --- the pre-flight check -------------------------------------------------------------------------------


def test_the_probe_answers_among_what_the_setup_lines_print() -> None:
    script = preflight.probe_script(sys.executable, ["echo 'Loading python/3.11'"])
    done = subprocess.run(["sh", "-s"], input=script.encode(), capture_output=True, check=True)
    remote = preflight.parse_probe(done.stdout.decode())
    assert remote is not None
    assert remote.version == PythonVersion.current()
    assert remote.cloudpickle_version == load_serializer().version
    assert preflight.check_remote_python(remote, where="here", serializer=load_serializer()) == []


def test_a_remote_python_of_another_minor_version_fails_naming_both() -> None:
    remote = preflight.RemotePython(PythonVersion(3, 9, 18), "/usr/bin/python3", "3.1.3")
    with pytest.raises(RemotePythonError) as caught:
        preflight.check_remote_python(
            remote, where="login1", serializer=load_serializer(), local=PythonVersion(3, 11, 7)
        )
    assert str(caught.value).startswith(
        "the job's Python on login1 is 3.9.18 (/usr/bin/python3), the Airflow worker's is 3.11.7"
    )
    with pytest.raises(RemotePythonError, match=r"the image img runs Python 3\.12 .* Airflow worker Python 3\.11\.7"):
        preflight.check_stated_version("3.12", image="img", local=PythonVersion(3, 11, 7))


def test_a_remote_python_without_cloudpickle_is_told_how_to_install_it_and_another_release_is_a_warning() -> None:
    serializer = load_serializer()
    missing = preflight.RemotePython(PythonVersion.current(), "/usr/bin/python3", None)
    with pytest.raises(
        RemotePythonError, match=f"'/usr/bin/python3 -m pip install --user cloudpickle=={serializer.version}'"
    ):
        preflight.check_remote_python(missing, where="login1", serializer=serializer)
    older = preflight.RemotePython(PythonVersion.current(), "/usr/bin/python3", "2.2.0")
    (warning,) = preflight.check_remote_python(older, where="login1", serializer=serializer)
    assert warning.startswith("cloudpickle 2.2.0 on login1")


# --- against the other Pythons this machine has (pyenv's, when present) ---------------------------------


def other_pythons() -> list[str]:
    """Interpreters of another major.minor than this one, oldest first."""
    found = []
    for candidate in sorted(Path("/root/.pyenv/versions").glob("*/bin/python"), key=lambda p: p.parts[-3]):
        version = candidate.parts[-3].split(".")
        if version[:2] != [str(sys.version_info[0]), str(sys.version_info[1])] and os.access(candidate, os.X_OK):
            found.append(str(candidate))
    return found


@pytest.mark.skipif(not other_pythons(), reason="no Python of another major.minor on this machine")
@pytest.mark.parametrize("python", other_pythons() or ["none"])
def test_another_python_is_named_by_the_preflight_check_and_stopped_by_the_bootstrap(
    python: str, tmp_path: Path
) -> None:
    done = subprocess.run(["sh", "-s"], input=preflight.probe_script(python).encode(), capture_output=True, check=True)
    remote = preflight.parse_probe(done.stdout.decode())
    assert remote is not None and not remote.version.same_minor(PythonVersion.current())
    with pytest.raises(RemotePythonError, match=rf"is {remote.version} \({python}\), the Airflow worker's is "):
        preflight.check_remote_python(remote, where="here", serializer=load_serializer())
    if remote.version.major < 3 or remote.version < PythonVersion(3, 6):
        return  # the bootstrap is written for 3.6+; older ones are the pre-flight check's to stop
    manifest = manifest_for(add, 1, result=str(tmp_path / "{SLURM_JOB_ID}.result"))
    ran = subprocess.run(
        ["sh", "-c", launch.cluster_command(python, manifest)],
        env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "5"},
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 3
    expected = (
        f"the payload was serialized by Python {PythonVersion.current()} on the Airflow worker; "
        f"this is Python {remote.version}"
    )
    assert ran.stderr.startswith(f"airflow-hpc: {expected}")
    result = ResultDocument.parse((tmp_path / "5.result").read_bytes(), "here")
    with pytest.raises(RemoteResultError, match=re.escape(expected)):
        return_value(result, serializer=load_serializer(), multiple_outputs=False, reference=_no_refs)
