"""The job's command that starts the bootstrap: a shell line for a cluster, a container command for Batch.

Cluster: ``<python> - <<'DELIM'`` followed by one line that sets ``AIRFLOW_HPC_MANIFEST`` (the
manifest as a Python string literal, the inline payload inside it) and the bootstrap's text. The
payload is in the job script's body, behind a quoted heredoc delimiter drawn at random: not on a
command line (``ps``), not in the job name, not in the environment (which ``srun``/``mpirun``
would copy to every task, and which Linux caps at 128 KiB per variable). The bootstrap stays
readable in ``scontrol write batch_script``.

Batch: ``[python, "-c", <loader>]``, the loader carrying the bootstrap without its docstrings,
zlib-compressed (about 5.5 KiB of the 30 KiB a SubmitJob request may hold), and the manifest in
the container's environment (``AIRFLOW_HPC_PAYLOAD``) through the API, as every value for a
container travels in this provider.
"""

from __future__ import annotations

import ast
import base64
import zlib
from functools import cache
from importlib import resources

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.python_task.manifest import PayloadManifest

BOOTSTRAP_RESOURCE = "remote_bootstrap.py"
MANIFEST_ENV = "AIRFLOW_HPC_PAYLOAD"  # the bootstrap's MANIFEST_ENV


@cache
def bootstrap_source() -> str:
    return resources.files(__package__).joinpath(BOOTSTRAP_RESOURCE).read_text(encoding="utf-8")


def check_python_command(python: str) -> str:
    """``python`` is one executable (a name on PATH or a path); modules and venvs go in ``setup``."""
    if not isinstance(python, str) or not python.strip() or any(c in python for c in "\n\r\x00"):
        raise ValueError(f"python={python!r}: give one interpreter, e.g. 'python3' or '/opt/venv/bin/python'")
    return python


def cluster_command(python: str, manifest: PayloadManifest) -> str:
    """Shell text for the batch script (after the setup lines): runs the bootstrap on the manifest."""
    program = f"AIRFLOW_HPC_MANIFEST = {manifest.to_json()!r}\n{bootstrap_source()}"
    return remote_shell.heredoc(program, feed=f"{remote_shell.quote(check_python_command(python))} -")


def compact_source() -> str:
    """The bootstrap without its docstrings and comments: the same program, a quarter smaller packed."""
    tree = ast.parse(bootstrap_source())
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


@cache
def _loader() -> str:
    packed = base64.b64encode(zlib.compress(compact_source().encode("utf-8"), 9)).decode("ascii")
    return (
        "import base64,zlib;"
        f"exec(compile(zlib.decompress(base64.b64decode('{packed}')),'airflow-hpc-bootstrap','exec'))"
    )


def batch_command(python: str) -> list[str]:
    """The container command override: no shell, so ``python`` is passed as it is."""
    return [check_python_command(python), "-c", _loader()]


def batch_environment(manifest: PayloadManifest) -> dict[str, str]:
    return {MANIFEST_ENV: manifest.to_json()}
