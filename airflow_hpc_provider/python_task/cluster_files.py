"""A Python task's files on a cluster, as pure shell text: write the payload, read the result, delete.

The files sit beside the job's output in the connection's ``log_dir`` (relative paths are under the
login user's home, as for the logs), private to the user (``umask 077``):

``<digest>-try<N>.payload``          the stored payload (only past the inline limit), per try
``<digest>-<job id>.result``         the result document, named by the job that wrote it
``<digest>-<job id>.result.v<i>``    values past the result inline limit (XCom holds a reference)

Each script goes over the transport's one SSH connection on stdin to ``sh -s``, like every other
command of this provider; binary data crosses as base64 inside a quoted heredoc.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.python_task import results
from airflow_hpc_provider.python_task.codec import MAX_STORED_PAYLOAD_BYTES, EncodedBody
from airflow_hpc_provider.python_task.manifest import check_template, fill_template
from airflow_hpc_provider.python_task.results import Referencer, ResultDocument

# The variable each scheduler sets to the job's id inside the job.
JOB_ID_VARIABLES = {"slurm": "SLURM_JOB_ID", "pbs": "PBS_JOBID", "sge": "JOB_ID"}


def payload_path(log_dir: str, key: JobKey) -> str:
    return f"{log_dir.rstrip('/')}/{key.task_digest}-try{key.try_number}.payload"


def result_template(log_dir: str, key: JobKey, scheduler: str) -> str:
    variable = JOB_ID_VARIABLES[scheduler]
    return check_template(
        f"{log_dir.rstrip('/')}/{key.task_digest}-{{{variable}}}.result", frozenset(JOB_ID_VARIABLES.values())
    )


def result_path(log_dir: str, key: JobKey, scheduler: str, job_id: str) -> str:
    """Where the job ``job_id`` wrote its result (the template, filled in as the job did)."""
    return fill_template(result_template(log_dir, key, scheduler), {JOB_ID_VARIABLES[scheduler]: job_id})


def upload_script(path: str, body: EncodedBody) -> str:
    """Write ``body`` to ``path`` whole or not at all; prints ``STORED <bytes>``."""
    if len(body.data) > MAX_STORED_PAYLOAD_BYTES:
        raise ValueError(
            f"the payload is {len(body.data)} bytes, more than {MAX_STORED_PAYLOAD_BYTES} sent over SSH: "
            "put large data on the cluster and pass its path to the function instead"
        )
    encoded = base64.encodebytes(body.data).decode("ascii")  # lines of 76 characters
    target = remote_shell.home_relative(path)
    directory = remote_shell.home_relative(os.path.dirname(path) or ".")
    size = len(body.data)
    return (
        "umask 077\n"
        f"mkdir -p -- {directory} || exit 1\n"
        f"_p={target}\n"
        '_tmp="$_p.tmp.$$"\n'
        + remote_shell.heredoc(encoded, feed='base64 -d > "$_tmp"')
        + f'if [ "$(wc -c < "$_tmp" | tr -d \' \')" != {size} ]; then\n'
        f'  rm -f -- "$_tmp"; echo "the payload written to $_p is not {size} bytes" >&2; exit 1\n'
        "fi\n"
        'mv -f -- "$_tmp" "$_p" || exit 1\n'
        f"printf 'STORED %s\\n' {size}\n"
    )


def parse_upload(stdout: str) -> int:
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "STORED" and rest.strip().isdigit():
            return int(rest)
    raise ValueError(f"no STORED line in the upload's output: {stdout!r}")


def read_result_script(path: str) -> str:
    """``RESULT`` and the document, or ``MISSING`` (the job wrote none, or it was deleted)."""
    target = remote_shell.home_relative(path)
    return f"if [ -f {target} ]; then echo RESULT; cat -- {target}; else echo MISSING; fi\n"


@dataclass(frozen=True)
class ResultRead:
    document: bytes | None  # None: there is no result file


def parse_read_result(stdout: bytes) -> ResultRead:
    head, _, rest = stdout.partition(b"\n")
    if head == b"RESULT":
        return ResultRead(document=rest)
    if head == b"MISSING":
        return ResultRead(document=None)
    raise ValueError(f"unexpected answer to the result read: {stdout[:200]!r}")


def referencer(document: ResultDocument, conn_id: str) -> Referencer:
    """How XCom names the values a cluster job left in files (absolute paths, as the job wrote them)."""
    return results.referencer(document, "cluster", conn_id, lambda stored: str(stored["path"]))


def read_value_script(path: str) -> str:
    """A stored value's bytes, base64-encoded (the SSH channel carries text safely)."""
    return f"base64 < {remote_shell.home_relative(path)}\n"


def cleanup_script(paths: Sequence[str], *, payloads_of: tuple[str, JobKey] | None = None) -> str:
    """Delete the payload and result files; files already gone are no error.

    ``payloads_of=(log_dir, key)`` also deletes the stored payloads of every try of the task
    instance: a retry that adopted an earlier try's job ran that try's payload, and wrote its own.
    """
    words = [remote_shell.home_relative(path) for path in paths]
    if payloads_of is not None:
        log_dir, key = payloads_of
        # The quoted prefix, then an unquoted glob: only "*" is left to the shell.
        words.append(remote_shell.home_relative(f"{log_dir.rstrip('/')}/{key.task_digest}-try") + "*.payload")
    if not words:
        return ":\n"
    return "rm -f -- " + " ".join(words) + "\n"
