"""What Airflow's *Test* button does for a cluster reached over SSH (``slurm``, ``pbs`` connections).

It connects with the connection's own settings (host key checked), runs one short script on the
login node that checks the scheduler's commands and lists what the user may use, and answers in
words: a wrong key, a host key mismatch, an unreachable host and a missing scheduler command each
get their own message, since each has its own fix.

This module holds the script, its verdicts and the words; the hook
(:meth:`~airflow_hpc_provider.hooks.ssh.SshClusterHook.test_connection`) connects and runs it. So
the import goes one way, hook to probe: the probe needs nothing of the transport but
:class:`~airflow_hpc_provider.hooks.command_result.CommandResult`, which sits below both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.errors import (
    ClusterAuthError,
    ClusterUnreachableError,
    ConnectionConfigError,
    HostKeyMismatchError,
)
from airflow_hpc_provider.hooks.command_result import CommandResult

T = TypeVar("T")


PROBE_TIMEOUT_S = 60.0  # a button in a web page: answer within a minute or say why not


@dataclass(frozen=True)
class SchedulerProbe:
    """One shell script the Test button runs on the login node, and how its output is judged.

    The script prints sections, each after a marker line; the first part (before any marker) is
    the scheduler's version. A missing scheduler command ends it with status 127 and names the
    command, so the message can say which.
    """

    scheduler: str = "the scheduler"
    commands: tuple[str, ...] = ()

    MARKER: ClassVar[str] = "@@airflow-hpc-probe:"

    def commands_check(self) -> str:
        names = " ".join(quote(name) for name in self.commands)
        return (
            f'for _c in {names}; do command -v "$_c" >/dev/null 2>&1 || '
            f"{{ printf '%s%s\\n' {quote(self.MARKER + 'missing ')} \"$_c\"; exit 127; }}; done\n"
        )

    def section(self, name: str, command: str) -> str:
        return f"printf '%s\\n' {quote(self.MARKER + name)}\n{command}\n"

    def sections(self, text: str) -> dict[str, str]:
        found: dict[str, list[str]] = {"": []}
        current = ""
        for line in text.splitlines():
            if line.startswith(self.MARKER):
                current = line[len(self.MARKER) :].strip()
                found.setdefault(current, [])
            else:
                found[current].append(line)
        return {name: "\n".join(lines) for name, lines in found.items()}

    def script(self) -> str:
        raise NotImplementedError

    def judge(self, result: CommandResult, where: str) -> tuple[bool, str]:
        raise NotImplementedError

    def verdict(self, result: CommandResult, where: str, shell: str) -> tuple[bool, str] | None:
        """A failure every probe reports the same way (a missing command, a failed script), else None."""
        missing = self.sections(result.text)
        for name in missing:
            if name.startswith("missing "):
                command = name.removeprefix("missing ")
                return False, (
                    f"Connected to {where}, but {command} is not on the PATH of the shell the provider uses "
                    f"there ({shell}): {self.scheduler} cannot be reached from this connection. If your site "
                    "loads it with 'module load' or a profile script, turn on the connection's 'Login shell'."
                )
        if result.exit_status != 0:
            status = "no exit status" if result.exit_status is None else f"exit status {result.exit_status}"
            return False, (
                f"Connected to {where}, but the {self.scheduler} check ended with {status}: "
                f"{(result.error_text or result.text).strip()[-500:]!r}"
            )
        return None


def run_to_completion(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from synchronous code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(asyncio.run(work))
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=run, name="hpc-connection-test")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return results[0]


def check_cluster_connection(conn_id: str, probe_login_node: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    """``(ok, message)`` as Airflow's connection test expects; never raises for a cluster problem.

    ``probe_login_node`` (the hook's) connects, runs the probe and judges its answer; what stops it
    is said here in words. The message names the login node as ``user@host:port`` only: the UI and
    the REST API test a connection under a random, temporary id, which would mean nothing to the
    person reading it.
    """
    ok, message = _check(probe_login_node)
    return ok, message.replace(f" (connection {conn_id})", "")


def _check(probe_login_node: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    try:
        return probe_login_node()
    except HostKeyMismatchError as error:
        return False, (
            f"Host key check failed: {error}. The login node did not prove it is the host this connection "
            "trusts (Known hosts / Host key). If it was reinstalled, check its new key out of band "
            "(ssh-keyscan, compared with what the site publishes) before updating the connection."
        )
    except ClusterAuthError as error:
        return False, (
            f"Authentication failed: {error}. The login node refused the key or password: check the user, "
            "the private key (file or pasted, with its passphrase) and that its public half is in "
            "~/.ssh/authorized_keys on the login node."
        )
    except ClusterUnreachableError as error:
        return False, (
            f"Unreachable: {error}. Check the host and port, and that this Airflow host (like every "
            "worker and triggerer) may reach the login node, or set a jump host."
        )
    except ConnectionConfigError as error:
        return False, f"The connection cannot be used: {error}"
