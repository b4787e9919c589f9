"""Git-pinned code on a cluster: resolve a task's pin and make its checkout on the login node.

One call, :func:`check_out`, on the cluster's own SSH connection: with a deploy key, one command
uploads the key (on stdin, never in a script or on a command line) into a fresh private directory,
then the checkout script (see :mod:`airflow_hpc_provider.git_pin`) uses it through
``GIT_SSH_COMMAND`` with the deploy connection's host keys only and removes the directory when it
ends, however it ends. Should the script never run (a dropped link), the directory is removed here.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseHook

from airflow_hpc_provider.dialects.remote_shell import random_token
from airflow_hpc_provider.errors import ConnectionConfigError, RemoteCommandError
from airflow_hpc_provider.git_pin import (
    KEY_UPLOAD_COMMAND,
    Checkout,
    CheckoutPlace,
    DeployKeyFiles,
    GitSource,
    checkout_script,
    key_removal_script,
    parse_checkout_output,
)
from airflow_hpc_provider.hooks.pasted_key import repair_pasted_key
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport

CHECKOUT_TIMEOUT_S = 1800.0  # a first clone of a large repository takes a while


@dataclass(frozen=True)
class DeployKey:
    """A deploy key and the git host's public keys, from an Airflow SSH connection. Not in repr."""

    conn_id: str
    private_key: str
    known_hosts: str

    def __repr__(self) -> str:
        return f"DeployKey(conn_id={self.conn_id!r})"

    @classmethod
    def from_connection(cls, conn_id: str) -> DeployKey:
        """Read ``private_key`` (or ``key_file``, read here) and ``host_key`` / ``known_hosts``.

        Host keys are required: the checkout runs ssh with ``StrictHostKeyChecking=yes`` against
        them alone, so a connection that says ``no_host_key_check`` is refused.
        """
        conn = BaseHook.get_connection(conn_id)
        extra: dict[str, Any] = dict(conn.extra_dejson)
        where = f"git key_conn_id {conn_id!r}"
        if str(extra.get("no_host_key_check", "")).strip().lower() in ("true", "1", "yes", "on"):
            raise ConnectionConfigError(f"{where}: no_host_key_check is refused for a deploy key; give host_key")
        import asyncssh  # here, not at import: the operator module is imported when DAGs are parsed

        target = SshTarget(conn_id=conn_id, host=conn.host or "", port=int(conn.port or 22))
        known_hosts = _known_hosts_text(target, extra, where)
        key_text = extra.get("private_key") or None
        key_file = extra.get("key_file") or None
        try:
            if key_text:
                key = asyncssh.import_private_key(repair_pasted_key(str(key_text)), extra.get("private_key_passphrase"))
            elif key_file:
                key = asyncssh.read_private_key(os.path.expanduser(str(key_file)), extra.get("private_key_passphrase"))
            else:
                raise ConnectionConfigError(f"{where}: the connection has no private_key (or key_file) extra")
        except (asyncssh.KeyImportError, OSError) as error:
            raise ConnectionConfigError(f"{where}: cannot load the private key: {error}") from None
        # Exported without a passphrase: ssh on the login node must read it without a prompt.
        exported = key.export_private_key("openssh").decode()
        return cls(conn_id=conn_id, private_key=exported, known_hosts=known_hosts)


def _known_hosts_text(target: SshTarget, extra: dict[str, Any], where: str) -> str:
    host_key = str(extra.get("host_key") or "").strip()
    if host_key:
        if not target.host:
            raise ConnectionConfigError(f"{where}: host_key needs the git host's name in the connection's host")
        names = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
        return f"{names} {host_key}\n"
    known = str(extra.get("known_hosts") or "").strip()
    if known and ("\n" in known or " " in known):
        return known + "\n"
    if known:
        try:
            with open(os.path.expanduser(known), encoding="utf-8") as file:
                return file.read()
        except OSError as error:
            raise ConnectionConfigError(f"{where}: cannot read known_hosts {known!r}: {error}") from None
    raise ConnectionConfigError(
        f"{where}: give the git host's key (host_key, or known_hosts): host keys are always checked"
    )


async def upload_key(transport: SshTransport, key: DeployKey) -> DeployKeyFiles:
    """The key into a fresh 0700 directory on the login node (file mode 0600), sent on stdin."""
    result = await transport.run_with_input(KEY_UPLOAD_COMMAND, key.private_key.encode())
    directory = result.text.strip()
    if result.exit_status != 0 or not directory.startswith("/") or "\n" in directory:
        raise RemoteCommandError(
            "writing the deploy key to a temporary file", transport.target.where, result.exit_status, result.error_text
        )
    return DeployKeyFiles(directory=directory, known_hosts=key.known_hosts)


async def check_out(
    transport: SshTransport, source: GitSource, place: CheckoutPlace, key: DeployKey | None = None
) -> tuple[Checkout, DeployKeyFiles | None]:
    """Resolve (or read) the task's pin and make (or reuse) the commit's checkout.

    Returns the checkout and, for tests, where the key was (removed by then).
    """
    key_files = await upload_key(transport, key) if key is not None else None
    finished = False
    try:
        token = random_token("AIRFLOW_HPC_GIT")
        result = await transport.run(checkout_script(token, source, place, key_files), timeout_s=CHECKOUT_TIMEOUT_S)
        finished = True
    finally:
        if key_files is not None and not finished:
            # The script's own trap removes it; it may never have run.
            with contextlib.suppress(Exception):
                await transport.run(key_removal_script(key_files.directory))
    checkout = parse_checkout_output(result.text, token)
    if result.exit_status != 0 or checkout is None:
        raise RemoteCommandError(
            f"checking out {source.repo} at {source.ref}", transport.target.where, result.exit_status, result.error_text
        )
    return checkout, key_files
