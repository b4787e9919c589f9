"""The cluster's files of a Python task over the one SSH connection: each call is one round trip.

Thin on purpose: the scripts are in :mod:`cluster_files` (pure, tested on their own); these run them
through :class:`SshTransport` and turn a failure into the provider's errors.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from airflow_hpc_provider.errors import RemoteCommandError
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.python_task import cluster_files
from airflow_hpc_provider.python_task.codec import EncodedBody
from airflow_hpc_provider.python_task.results import RemoteResult


async def upload_payload(transport: SshTransport, path: str, body: EncodedBody) -> None:
    result = await transport.run(cluster_files.upload_script(path, body))
    if result.exit_status != 0:
        raise RemoteCommandError("writing the payload", transport.target.where, result.exit_status, result.error_text)
    cluster_files.parse_upload(result.text)


async def read_result(transport: SshTransport, path: str) -> bytes | None:
    """The result document the job wrote, or ``None`` when there is none."""
    result = await transport.run(cluster_files.read_result_script(path))
    if result.exit_status != 0:
        raise RemoteCommandError("reading the result", transport.target.where, result.exit_status, result.error_text)
    return cluster_files.parse_read_result(result.stdout).document


async def load_stored(transport: SshTransport, ref: RemoteResult) -> bytes:
    """The stored bytes of a value that stayed on the cluster (decode with :meth:`RemoteResult.decode`)."""
    result = await transport.run(cluster_files.read_value_script(ref.location))
    if result.exit_status != 0:
        raise RemoteCommandError(
            f"reading {ref.location}", transport.target.where, result.exit_status, result.error_text
        )
    return base64.b64decode(result.stdout)


async def delete_files(
    transport: SshTransport, paths: Sequence[str], *, payloads_of: tuple[str, JobKey] | None = None
) -> None:
    result = await transport.run(cluster_files.cleanup_script(paths, payloads_of=payloads_of))
    if result.exit_status != 0:
        raise RemoteCommandError(
            "deleting the payload and result", transport.target.where, result.exit_status, result.error_text
        )
