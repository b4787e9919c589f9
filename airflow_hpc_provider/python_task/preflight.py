"""Before submitting: is the remote Python one that can load what this worker pickles?

A pickled function is bytecode of one CPython major.minor, so a job whose Python differs would wait
in the queue (maybe for hours) only to fail at start. One cheap SSH command on the login node asks
the job's interpreter, after the task's setup lines (``module load python/3.11``, a venv), for its
version and its cloudpickle; a mismatch fails the task at once, naming both versions.

The probe program is Python 2 and 3 alike, so even an unexpected ``python`` answers instead of
failing with a SyntaxError. It runs on the login node: where compute nodes have another Python
than the login node, the bootstrap's own check at job start still catches it.

AWS Batch: the image's Python is only known when the container runs; nothing on the worker can ask
it without pulling the image. A task may state it (``python_version="3.11"``), checked here by
:func:`check_stated_version`; otherwise the bootstrap checks at container start and fails within
seconds, naming both versions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.errors import RemotePythonError
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.python_task.launch import check_python_command
from airflow_hpc_provider.python_task.serializer import PythonVersion, Serializer

MARKER = "AIRFLOW_HPC_PYTHON"

# Python 2.6+ and 3.x alike: no f-strings, print as a function of one argument.
PROBE_PROGRAM = f"""\
import sys, json
try:
    import cloudpickle
    serializer = getattr(cloudpickle, "__version__", "unknown")
except Exception:
    serializer = None
sys.stdout.write("{MARKER} " + json.dumps({{"version": list(sys.version_info[:3]),
    "executable": sys.executable, "cloudpickle": serializer}}) + "\\n")
"""


@dataclass(frozen=True)
class RemotePython:
    version: PythonVersion
    executable: str
    cloudpickle_version: str | None


def probe_script(python: str, setup: Sequence[str] = ()) -> str:
    """The task's setup lines, then the probe under the task's interpreter."""
    lines = "".join(f"{line}\n" for line in setup)
    return lines + remote_shell.heredoc(PROBE_PROGRAM, feed=f"{remote_shell.quote(check_python_command(python))} -")


def parse_probe(stdout: str) -> RemotePython | None:
    """The probe's answer, found among whatever the setup lines printed; ``None`` when there is none."""
    for line in stdout.splitlines():
        if line.startswith(MARKER + " "):
            data = json.loads(line[len(MARKER) + 1 :])
            major, minor, micro = (int(part) for part in data["version"])
            return RemotePython(
                version=PythonVersion(major, minor, micro),
                executable=str(data["executable"]),
                cloudpickle_version=data.get("cloudpickle"),
            )
    return None


def check_remote_python(
    remote: RemotePython, *, where: str, serializer: Serializer, local: PythonVersion | None = None
) -> list[str]:
    """Raise when the remote Python cannot load the payload; return warnings worth logging."""
    here = local or PythonVersion.current()
    if not remote.version.same_minor(here):
        raise RemotePythonError(
            f"the job's Python on {where} is {remote.version} ({remote.executable}), the Airflow worker's is "
            f"{here}: a function pickled under Python {here.minor_text} loads only under {here.minor_text}. "
            f"Point python= or setup= at a Python {here.minor_text} there, or run the workers under "
            f"Python {remote.version.minor_text}; nothing was submitted"
        )
    if remote.cloudpickle_version is None:
        raise RemotePythonError(
            f"cloudpickle is not installed for {remote.executable} (Python {remote.version}) on {where}: install "
            f"it there, e.g. '{remote.executable} -m pip install --user cloudpickle=={serializer.version}'; "
            "nothing was submitted"
        )
    if remote.cloudpickle_version != serializer.version:
        return [
            f"cloudpickle {remote.cloudpickle_version} on {where}, {serializer.version} on this worker: pickles are "
            "only promised to load under the same release"
        ]
    return []


def check_stated_version(stated: str, *, image: str, local: PythonVersion | None = None) -> None:
    """AWS Batch: the image's Python as the task states it (``python_version="3.11"``) against this worker's."""
    here = local or PythonVersion.current()
    try:
        version = PythonVersion.parse(stated)
    except ValueError as error:
        raise RemotePythonError(f"python_version={stated!r}: {error}") from None
    if not version.same_minor(here):
        raise RemotePythonError(
            f"the image {image} runs Python {version.minor_text} (python_version), the Airflow worker "
            f"Python {here}: a function pickled under Python {here.minor_text} loads only under "
            f"{here.minor_text}; nothing was submitted"
        )


async def probe_remote_python(transport: SshTransport, python: str, setup: Sequence[str] = ()) -> RemotePython:
    """One SSH command: the setup lines and the probe. Raises when the interpreter does not answer."""
    result = await transport.run(probe_script(python, setup))
    found = parse_probe(result.text)
    if found is None:
        raise RemotePythonError(
            f"{python!r} on {transport.target.where} did not answer the version probe "
            f"(exit {result.exit_status}): {(result.error_text or result.text).strip()[-2000:]!r}"
        )
    return found
