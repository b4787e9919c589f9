# ruff: noqa: UP006, UP035, UP045
# (typing.Dict and friends: this program must start on Python 3.6+, where dict[...] in an annotation fails)
"""The program a Python task's job runs remotely, with the cluster's or the image's own python3.

Self-contained: the standard library and the serializer (cloudpickle) only; boto3 if the image has it
and S3 is involved. It never imports Airflow or this package, and it is written for Python 3.6+ so
that an older interpreter still gets as far as saying which version it is.

It reads the manifest (see ``manifest.py``: from the global ``AIRFLOW_HPC_MANIFEST`` that the job
script's heredoc sets before this text, or from the ``AIRFLOW_HPC_PAYLOAD`` environment variable in
a Batch container), checks the Python major.minor against the one that made the payload, loads the
payload (inline, a file, or S3), runs the function with its stdout and stderr going to the job's
output, line by line, and writes the result document (the return value, or the exception with its
remote traceback) to the result location. Exit status: 0 the function returned; 1 it raised (or the
exit status a ``sys.exit(n)`` asked for); 3 the payload could not be run here (the message says why).
"""

import base64
import gzip
import hashlib
import json
import os
import re
import sys
import traceback
from typing import Any, Dict, Optional, Tuple

FORMAT = 1
EXIT_RAISED = 1
EXIT_UNUSABLE = 3
MANIFEST_ENV = "AIRFLOW_HPC_PAYLOAD"
GZIP_THRESHOLD_BYTES = 4 * 1024
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Unusable(Exception):
    """The payload cannot run here; the message says why and what to do."""


def say(text: str) -> None:
    sys.stderr.write("airflow-hpc: " + text + "\n")
    sys.stderr.flush()


def this_python() -> str:
    return f"Python {version_text()} ({sys.executable})"


def version_text() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])


def expand(template: str) -> str:
    """``{NAME}`` placeholders from the job's environment (``{SLURM_JOB_ID}``, ``{AWS_BATCH_JOB_ID}``)."""

    def value(match: Any) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise Unusable(f"the result location {template!r} needs ${name}, which this job's environment lacks")
        return os.environ[name]

    return _PLACEHOLDER.sub(value, template)


def local_path(path: str) -> str:
    """Relative paths are under the home directory, as the worker's scripts place them."""
    return path if os.path.isabs(path) else os.path.join(os.path.expanduser("~"), path)


def check_python(manifest: Dict[str, Any]) -> None:
    wanted = [int(part) for part in str(manifest["python"]).split(".")]
    if (sys.version_info[0], sys.version_info[1]) != (wanted[0], wanted[1]):
        raise Unusable(
            f"the payload was serialized by Python {manifest['python']} on the Airflow worker; this is "
            f"{this_python()}. A pickled function loads only under the same major.minor: run Python "
            f"{wanted[0]}.{wanted[1]} here (python=, setup=) or the workers under Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}"
        )


def load_serializer(manifest: Dict[str, Any]) -> Any:
    name = str(manifest["serializer"])
    wanted = manifest.get("serializer_version", "")
    try:
        module = __import__(name)
    except ImportError:
        raise Unusable(
            f"{name} is not installed for {this_python()}: install it for this interpreter, "
            f"e.g. '{sys.executable} -m pip install --user {name}=={wanted}'"
        ) from None
    version = str(getattr(module, "__version__", "unknown"))
    if version != wanted:
        say(
            f"warning: {name} {version} here, {wanted} on the Airflow worker: pickles are only promised to load "
            "under the same release"
        )
    return module


class S3:
    """S3 through boto3 when the image has it (the job role's credentials), else through presigned URLs.

    When both are there and boto3 fails (no credentials in the container, access denied), the URL is
    tried before giving up.
    """

    def __init__(self) -> None:
        self._client = None  # type: Any

    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
            except ImportError:
                return None
            self._client = boto3.client("s3")
        return self._client

    def get(self, bucket: str, key: str, url: Optional[str]) -> bytes:
        problem = "boto3 is not installed"
        client = self.client()
        if client is not None:
            try:
                data = client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: bytes
                return data
            except Exception as error:
                problem = f"boto3 failed: {type(error).__name__}: {error}"
        if not url:
            raise Unusable(f"cannot read s3://{bucket}/{key} with {this_python()}: {problem}, and no presigned URL")
        return http("GET", url, None, {})

    def put(self, target: Dict[str, Any], key: str, data: bytes, url: Optional[str]) -> None:
        problem = "boto3 is not installed"
        client = self.client()
        if client is not None:
            try:
                client.put_object(Bucket=target["bucket"], Key=key, Body=data, **dict(target.get("encryption") or {}))
                return
            except Exception as error:
                problem = f"boto3 failed: {type(error).__name__}: {error}"
        if not url:
            raise Unusable(
                f"cannot write s3://{target['bucket']}/{key} with {this_python()}: {problem}; without boto3 only "
                "the result document itself can be written, through its presigned URL"
            )
        http("PUT", url, data, dict(target.get("put_headers") or {}))


def http(method: str, url: str, data: Optional[bytes], headers: Dict[str, str]) -> bytes:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            body = answer.read()  # type: bytes
            return body
    except urllib.error.HTTPError as error:
        detail = error.read()[:500].decode("utf-8", "replace")
        raise Unusable(
            f"{method} of a presigned S3 URL answered {error.code} {error.reason} (expired?): {detail}"
        ) from None


def fetch_body(body: Dict[str, Any], s3: S3) -> bytes:
    where = body["where"]
    if where == "inline":
        data = base64.b64decode(body["text"])
    elif where == "file":
        path = local_path(body["path"])
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise Unusable(f"cannot read the payload file {path}: {error}") from None
    elif where == "s3":
        data = s3.get(body["bucket"], body["key"], body.get("url"))
    else:
        raise Unusable(f"unknown payload location {where!r}: this bootstrap is older than the worker's")
    if hashlib.sha256(data).hexdigest() != body["sha256"]:
        raise Unusable(f"the payload ({where}) does not have the SHA-256 the worker wrote: it was changed or cut")
    return gzip.decompress(data) if body["compression"] == "gzip" else data


def type_name(value: Any) -> str:
    kind = type(value)
    module = getattr(kind, "__module__", "builtins")
    qualname = getattr(kind, "__qualname__", kind.__name__)
    return qualname if module == "builtins" else module + "." + qualname


class ResultWriter:
    """Writes values past the inline limit beside the result document, then the document last."""

    def __init__(self, manifest: Dict[str, Any], s3: S3) -> None:
        self.target = manifest["result"]
        self.limit = int(manifest["result_inline_limit"])
        self.s3 = s3
        self.where = self.target["where"]
        if self.where == "file":
            self.location = local_path(expand(self.target["path"]))
        elif self.where == "s3":
            self.location = expand(self.target["key"])
        else:
            raise Unusable(f"unknown result location {self.where!r}: this bootstrap is older than the worker's")
        self.stored = 0

    def record(self, serializer: Any, value: Any) -> Dict[str, Any]:
        raw = serializer.dumps(value)
        data = gzip.compress(raw, 6, mtime=0) if len(raw) > GZIP_THRESHOLD_BYTES else raw
        record = {
            "type": type_name(value),
            "size": len(raw),
            "compression": "gzip" if data is not raw else "none",
            "sha256": hashlib.sha256(data).hexdigest(),
        }  # type: Dict[str, Any]
        if 4 * ((len(data) + 2) // 3) <= self.limit:
            record["inline"] = base64.b64encode(data).decode("ascii")
            return record
        name = f"{self.location}.v{self.stored}"
        self.stored += 1
        if self.where == "file":
            write_file(name, data)
            record["stored"] = {"path": name}
        else:
            self.s3.put(self.target, name, data, None)
            record["stored"] = {"bucket": self.target["bucket"], "key": name}
        return record

    def finish(self, document: Dict[str, Any]) -> None:
        data = json.dumps(document, sort_keys=True).encode("utf-8")
        if self.where == "file":
            write_file(self.location, data)
        else:
            self.s3.put(self.target, self.location, data, self.target.get("put_url"))


def write_file(path: str, data: bytes) -> None:
    """Whole or not at all: a reader never sees half a result."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp.{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def multiple_outputs_problem(value: Any) -> Optional[str]:
    """Airflow's own words (its task runner's) when a value cannot be split into XComs by key."""
    import collections.abc

    if not isinstance(value, collections.abc.Mapping):
        return f"Returned output was type {type(value)} expected dictionary for multiple_outputs"
    for key in value:
        if not isinstance(key, str):
            return (
                "Returned dictionary keys must be strings when using multiple_outputs, "
                f"found {key} ({type(key)}) instead"
            )
    return None


def formatted_traceback(error: BaseException) -> str:
    """The traceback from the function down, without the bootstrap's own frame."""
    tb = error.__traceback__
    tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb
    return "".join(traceback.format_exception(type(error), error, tb))


def run(call: Dict[str, Any]) -> Tuple[str, Any, Optional[BaseException], int]:
    """(status, value, exception, exit status) of the function call."""
    try:
        value = call["function"](*call["args"], **call["kwargs"])
    except SystemExit as stop:  # sys.exit() in the function: the job ends as Python would
        if stop.code is None or stop.code == 0:
            return "returned", None, None, 0
        return "raised", None, stop, stop.code if isinstance(stop.code, int) else EXIT_RAISED
    except BaseException as error:
        return "raised", None, error, EXIT_RAISED
    return "returned", value, None, 0


def document_base(manifest: Dict[str, Any], status: str, exit_status: int) -> Dict[str, Any]:
    return {
        "format": FORMAT,
        "status": status,
        "exit_status": exit_status,
        "python": version_text(),
        "executable": sys.executable,
        "serializer": manifest.get("serializer"),
    }


def read_manifest() -> Dict[str, Any]:
    text = globals().get("AIRFLOW_HPC_MANIFEST") or os.environ.get(MANIFEST_ENV)
    if not text:
        raise Unusable(f"no payload manifest: neither AIRFLOW_HPC_MANIFEST nor ${MANIFEST_ENV} is set")
    manifest = json.loads(text)  # type: Dict[str, Any]
    if manifest.get("format") != FORMAT:
        raise Unusable(f"payload format {manifest.get('format')!r}, this bootstrap reads {FORMAT}")
    return manifest


def line_buffered() -> None:
    # The job's output is a file: without this, print() output would reach the task log in 8 KiB blocks.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)


def prepare(s3: S3) -> Tuple[Dict[str, Any], ResultWriter, Any, Dict[str, Any]]:
    """(manifest, writer, serializer, call), or :class:`Unusable` saying what stops the call here."""
    manifest = read_manifest()
    writer = ResultWriter(manifest, s3)
    check_python(manifest)
    serializer = load_serializer(manifest)
    raw = fetch_body(manifest["body"], s3)
    try:
        call = serializer.loads(raw)  # type: Dict[str, Any]
    except Exception as error:  # most often a module the function or an argument needs
        raise Unusable(
            f"{manifest['serializer']} could not load the payload: {type(error).__name__}: {error}. Whatever "
            f"the function or its arguments import must be installed for {this_python()}"
        ) from None
    return manifest, writer, serializer, call


def unusable(problem: Unusable, s3: S3) -> int:
    """Say why; write that as the result too if the manifest got far enough to say where."""
    say(str(problem))
    try:
        manifest = read_manifest()
        writer = ResultWriter(manifest, s3)
    except Exception:
        return EXIT_UNUSABLE
    document = document_base(manifest, "unusable", EXIT_UNUSABLE)
    document["message"] = str(problem)
    try:
        writer.finish(document)
    except Exception as failure:
        say(f"could not write the result either: {type(failure).__name__}: {failure}")
    return EXIT_UNUSABLE


def describe(
    manifest: Dict[str, Any], writer: ResultWriter, serializer: Any, outcome: Tuple[str, Any, Any, int]
) -> Tuple[Dict[str, Any], int]:
    """The result document of a call's outcome (values past the limit stored on the way), and the exit status."""
    status, value, error, exit_status = outcome
    document = document_base(manifest, status, exit_status)
    try:
        if error is not None:
            text = formatted_traceback(error)
            sys.stderr.write(text)
            sys.stderr.flush()
            document["error"] = {"type": type_name(error), "message": str(error), "traceback": text}
        elif manifest.get("multiple_outputs") and value is not None:
            split_problem = multiple_outputs_problem(value)
            if split_problem:
                document["multiple_outputs_error"] = split_problem
                document["value"] = writer.record(serializer, value)
            else:
                document["values"] = {key: writer.record(serializer, item) for key, item in value.items()}
        else:
            document["value"] = writer.record(serializer, value)
    except Exception as keeping:  # the return value itself cannot be pickled or stored
        say(f"the function returned, but its result could not be kept: {type(keeping).__name__}: {keeping}")
        document = document_base(manifest, "raised", EXIT_RAISED)
        document["error"] = {
            "type": type_name(keeping),
            "message": f"the return value ({type_name(value)}) could not be serialized or stored: {keeping}",
            "traceback": formatted_traceback(keeping),
        }
        exit_status = EXIT_RAISED
    return document, exit_status


def main() -> int:
    line_buffered()
    s3 = S3()
    try:
        manifest, writer, serializer, call = prepare(s3)
    except Unusable as problem:
        return unusable(problem, s3)
    document, exit_status = describe(manifest, writer, serializer, run(call))
    try:
        writer.finish(document)
    except Exception as failure:
        say(f"could not write the result: {type(failure).__name__}: {failure}")
        return EXIT_UNUSABLE
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
