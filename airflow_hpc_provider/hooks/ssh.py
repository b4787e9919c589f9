"""From an Airflow connection to asyncssh, and one shared SSH connection per cluster per event loop.

:class:`SshTarget` reads a ``slurm``/``pbs`` connection (or the SSH provider's ``ssh`` type, whose
extras are honoured) into asyncssh options. Host keys are verified unless the connection says
``no_host_key_check: true`` in so many words, whatever type it is.

:class:`SshTransport` owns one asyncssh connection, opens it on first use, opens it again after it
drops, and caps concurrent channels below the login node's ``MaxSessions``. Scripts always travel on
stdin to ``sh -s``: nothing of ours is parsed by the user's login shell or shows in ``ps``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_hpc_provider.dialects.remote_shell import quote, whole_or_nothing
from airflow_hpc_provider.errors import (
    ClusterAuthError,
    ClusterUnreachableError,
    ConnectionConfigError,
    HostKeyMismatchError,
)
from airflow_hpc_provider.hooks.command_result import CommandResult
from airflow_hpc_provider.hooks.pasted_key import repair_pasted_key
from airflow_hpc_provider.hooks.probe import (
    PROBE_TIMEOUT_S,
    SchedulerProbe,
    check_cluster_connection,
    run_to_completion,
)


class _OnFirstUse:
    """A module imported when first used. asyncssh takes a second or more to import on a busy host,
    and a triggerer imports a trigger's module in its event loop: importing it there would stall
    every trigger. :meth:`SshTransport._connection` imports it in a thread before first use."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        module: ModuleType = importlib.import_module(self._name)
        return getattr(module, attribute)


if TYPE_CHECKING:
    import asyncssh
else:
    asyncssh = _OnFirstUse("asyncssh")
_imported = threading.Event()

# asyncssh logs several INFO lines per command; in a task log they would drown the job's output.
# Quiet it unless someone configured its logger on purpose.
if logging.getLogger("asyncssh").level == logging.NOTSET:
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_MAX_SESSIONS = 8  # OpenSSH's default MaxSessions is 10: stay under it
DEFAULT_COMMAND_TIMEOUT_S = 300.0
# A refused channel (the server's session limit) is asked for again, waiting 0.1, 0.2 ... s: ~10 s in all.
CHANNEL_OPEN_ATTEMPTS = 14
CHANNEL_OPEN_RETRY_S = 0.1
# What asyncssh says when a channel could not open because the connection is gone.
_CONNECTION_CLOSED = "SSH connection closed"
# A silently dead link (a host gone, a firewall dropping packets) shows no error: asyncssh asks the
# server every KEEPALIVE_INTERVAL_S while it hears nothing and drops the connection after
# KEEPALIVE_COUNT_MAX unanswered asks, so a dead link is noticed within about 15-20 s.
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT_MAX = 3


def _flag(extra: Mapping[str, Any], name: str, default: bool) -> bool:
    value = extra.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConnectionConfigError(f"extra {name}={value!r} is not a yes/no value")


def _number(extra: Mapping[str, Any], name: str, default: float) -> float:
    value = extra.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConnectionConfigError(f"extra {name}={value!r} is not a number") from None
    if number <= 0:
        raise ConnectionConfigError(f"extra {name}={value!r} must be more than zero")
    return number


@dataclass(frozen=True)
class JumpHost:
    host: str
    port: int
    username: str | None

    @classmethod
    def parse(cls, text: str) -> JumpHost:
        """``[user@]host[:port]``, as OpenSSH's ProxyJump takes it."""
        user, _, hostport = text.strip().rpartition("@")
        host, _, port = hostport.partition(":")
        if not host:
            raise ConnectionConfigError(f"jump_host={text!r} is not [user@]host[:port]")
        try:
            return cls(host=host, port=int(port) if port else 22, username=user or None)
        except ValueError:
            raise ConnectionConfigError(f"jump_host={text!r} has a port that is not a number") from None


@dataclass(frozen=True)
class SshTarget:
    """Everything needed to open an SSH connection to a cluster's login node. Secrets stay out of repr."""

    conn_id: str
    host: str
    port: int = 22
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    key_file: str | None = None
    passphrase: str | None = field(default=None, repr=False)
    certificate: str | None = None
    known_hosts: str | None = None
    host_key: str | None = None
    verify_host_key: bool = True
    look_for_keys: bool = True
    jump_host: JumpHost | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    login_shell: bool = False
    max_sessions: int = DEFAULT_MAX_SESSIONS

    @classmethod
    def from_connection(cls, conn: Any) -> SshTarget:
        """Read an Airflow ``Connection`` (``slurm``, ``pbs`` or ``ssh`` type)."""
        extra: Mapping[str, Any] = conn.extra_dejson
        if not conn.host:
            raise ConnectionConfigError(f"connection {conn.conn_id!r} has no host")
        jump = extra.get("jump_host")
        return cls(
            conn_id=conn.conn_id,
            host=conn.host,
            port=int(conn.port or 22),
            username=conn.login or None,
            password=conn.password or None,
            private_key=extra.get("private_key") or None,
            key_file=extra.get("key_file") or None,
            passphrase=extra.get("private_key_passphrase") or None,
            certificate=extra.get("certificate") or None,
            known_hosts=extra.get("known_hosts") or None,
            host_key=extra.get("host_key") or None,
            verify_host_key=not _flag(extra, "no_host_key_check", False),
            look_for_keys=_flag(extra, "look_for_keys", True),
            jump_host=JumpHost.parse(jump) if jump else None,
            connect_timeout_s=_number(
                extra, "connect_timeout", _number(extra, "conn_timeout", DEFAULT_CONNECT_TIMEOUT_S)
            ),
            login_shell=_flag(extra, "login_shell", False),
            max_sessions=int(_number(extra, "max_sessions", DEFAULT_MAX_SESSIONS)),
        )

    @property
    def where(self) -> str:
        """How errors name the cluster: ``hpcuser@login1:22 (connection slurm_prod)``."""
        user = f"{self.username}@" if self.username else ""
        return f"{user}{self.host}:{self.port} (connection {self.conn_id})"

    @property
    def shell_command(self) -> str:
        # A login shell loads the site's profile (modules, PATH to sbatch) before reading stdin.
        return "bash -l -s" if self.login_shell else "sh -s"

    def client_keys(self) -> list[Any] | None:
        keys: list[Any] = []
        try:
            if self.private_key:
                keys.append(asyncssh.import_private_key(repair_pasted_key(self.private_key), self.passphrase))
            if self.key_file:
                keys.append(asyncssh.read_private_key(os.path.expanduser(self.key_file), self.passphrase))
        except (asyncssh.KeyImportError, OSError, ConnectionConfigError) as error:
            raise ConnectionConfigError(f"connection {self.conn_id!r}: cannot load the private key: {error}") from None
        if self.certificate:
            if not keys:
                raise ConnectionConfigError(
                    f"connection {self.conn_id!r}: an SSH certificate needs its private key (key_file or private_key)"
                )
            cert = self._load_certificate()
            keys = [(keys[0], cert), *keys[1:]]
        if keys:
            return keys
        # No key configured: asyncssh's defaults (agent, ~/.ssh/id_*) unless the connection says no.
        return None if self.look_for_keys else []

    def _load_certificate(self) -> Any:
        text = self.certificate or ""
        try:
            if text.lstrip().startswith(("ssh-", "ecdsa-", "sk-")):
                return asyncssh.import_certificate(text)
            return asyncssh.read_certificate(os.path.expanduser(text))
        except (asyncssh.KeyImportError, OSError) as error:
            raise ConnectionConfigError(
                f"connection {self.conn_id!r}: cannot load the SSH certificate: {error}"
            ) from None

    def known_hosts_option(self) -> Any:
        if not self.verify_host_key:
            return None
        if self.host_key:
            # The SSH provider's style: just the server's public key.
            names = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
            return asyncssh.import_known_hosts(f"{names} {self.host_key.strip()}\n")
        if self.known_hosts:
            text = self.known_hosts.strip()
            if "\n" not in text and " " not in text:
                return os.path.expanduser(text)  # a path
            return asyncssh.import_known_hosts(text + "\n")
        return ()  # asyncssh's default: ~/.ssh/known_hosts, verified

    def connect_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "known_hosts": self.known_hosts_option(),
            "connect_timeout": self.connect_timeout_s,
            "keepalive_interval": KEEPALIVE_INTERVAL_S,
            "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        }
        if self.username:
            options["username"] = self.username
        if self.password:
            options["password"] = self.password
        keys = self.client_keys()
        if keys is not None:
            options["client_keys"] = keys
        return options


class SshClusterHook(BaseHook):
    """Base of the hooks whose connection names a cluster's login node reached over SSH.

    :meth:`test_connection` is what Airflow's *Test* button (UI, REST, ``airflow connections
    test``) calls: it connects with the connection's own settings, host key checked, and runs the
    subclass's :class:`SchedulerProbe` on the login node in one round trip.
    """

    def __init__(self, conn_id: str) -> None:
        super().__init__()
        self.conn_id = conn_id

    def get_conn(self) -> Any:
        return self.get_connection(self.conn_id)

    def get_target(self) -> SshTarget:
        return SshTarget.from_connection(self.get_conn())

    @staticmethod
    def login_shell_default(conn: Any) -> bool:
        return _flag(conn.extra_dejson, "login_shell", False)

    def scheduler_probe(self, extra: Mapping[str, Any]) -> SchedulerProbe:
        """The scheduler check the Test button runs (a subclass says which scheduler)."""
        raise NotImplementedError

    def test_connection(self) -> tuple[bool, str]:
        """Connect, check the scheduler's commands, and say in words what is wrong if anything is."""
        return check_cluster_connection(self.conn_id, self._probe_login_node)

    def _probe_login_node(self) -> tuple[bool, str]:
        """Run the probe's script on the login node over a transport of its own, and judge the answer."""
        conn = self.get_conn()
        target = SshTarget.from_connection(conn)
        probe = self.scheduler_probe(conn.extra_dejson)
        result = run_to_completion(_run_once(target, probe.script(), PROBE_TIMEOUT_S))
        return probe.verdict(result, target.where, target.shell_command) or probe.judge(result, target.where)


class SshTransport:
    """One SSH connection to one cluster, opened lazily and again after it drops."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self._conn: asyncssh.SSHClientConnection | None = None
        self._jump: asyncssh.SSHClientConnection | None = None
        self._connecting = asyncio.Lock()
        self._sessions = asyncio.Semaphore(target.max_sessions)
        self.connections_opened = 0
        self.commands_run = 0

    async def _connection(self) -> asyncssh.SSHClientConnection:
        if not _imported.is_set():  # see _OnFirstUse
            await asyncio.to_thread(importlib.import_module, "asyncssh")
            _imported.set()
        async with self._connecting:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            await self._drop()
            options = self.target.connect_options()
            try:
                if self.target.jump_host:
                    jump = self.target.jump_host
                    jump_options = {**options, "host": jump.host, "port": jump.port}
                    if jump.username:
                        jump_options["username"] = jump.username
                    self._jump = await asyncssh.connect(**jump_options)
                    options["tunnel"] = self._jump
                self._conn = await asyncssh.connect(**options)
            except asyncssh.HostKeyNotVerifiable as error:
                await self._drop()
                raise HostKeyMismatchError(f"SSH to {self.target.where} refused: {error}") from None
            except asyncssh.PermissionDenied as error:
                await self._drop()
                raise ClusterAuthError(f"SSH to {self.target.where} refused: {error}") from None
            except (OSError, asyncssh.Error, TimeoutError) as error:
                await self._drop()
                raise ClusterUnreachableError(
                    f"cannot reach {self.target.where}: {type(error).__name__}: {error}"
                ) from None
            self.connections_opened += 1
            return self._conn

    async def run(self, script: str, *, timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> CommandResult:
        """Run a POSIX shell script (sent on stdin) and return its exit status and raw output.

        The script travels as one brace group (see :func:`whole_or_nothing`): cut off on the way, it
        runs not at all rather than in part. A command that gives no answer within ``timeout_s``
        drops the connection (the link is presumed dead; the next command opens a new one).
        """
        return await self.run_with_input(
            self.target.shell_command, whole_or_nothing(script).encode(), timeout_s=timeout_s
        )

    async def run_with_input(
        self, command: str, data: bytes, *, timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S
    ) -> CommandResult:
        """Run one fixed ``command`` with ``data`` on its stdin (a secret travels this way, never in
        a script or on a command line); the same session cap, retries and timeouts as :meth:`run`."""
        async with self._sessions:
            refused = 0
            while True:
                conn = await self._connection()
                try:
                    # asyncio.timeout, not run(timeout=): the latter goes through wait_for, which on
                    # Python 3.11 can swallow a cancellation and keep a cancelled trigger polling.
                    async with asyncio.timeout(timeout_s):
                        completed = await conn.run(command, input=data, encoding=None, check=False)
                    break
                except asyncssh.ChannelOpenError as error:
                    if conn.is_closed() or error.reason == _CONNECTION_CLOSED:
                        await self.close()  # the link dropped under the opening channel
                        raise ClusterUnreachableError(
                            f"the SSH link to {self.target.where} dropped: {type(error).__name__}: {error}"
                        ) from None
                    # The server refused a new channel: nothing ran, and the channels in flight on
                    # this connection are fine. sshd counts a session against MaxSessions until it
                    # has reaped it, so a limit below it is not always enough: wait for one to end.
                    refused += 1
                    if refused >= CHANNEL_OPEN_ATTEMPTS:
                        raise ClusterUnreachableError(
                            f"{self.target.where} refused {refused} times to open a channel: {error}"
                        ) from None
                    await asyncio.sleep(CHANNEL_OPEN_RETRY_S * refused)
                except TimeoutError:
                    await self.close()
                    raise ClusterUnreachableError(
                        f"a command on {self.target.where} gave no answer within {timeout_s:.0f}s; "
                        "dropped the connection"
                    ) from None
                except (OSError, asyncssh.Error) as error:
                    await self.close()
                    raise ClusterUnreachableError(
                        f"the SSH link to {self.target.where} dropped: {type(error).__name__}: {error}"
                    ) from None
            self.commands_run += 1
            stdout = completed.stdout if isinstance(completed.stdout, bytes) else b""
            stderr = completed.stderr if isinstance(completed.stderr, bytes) else b""
            return CommandResult(completed.exit_status, stdout, stderr)

    async def probe(self, *, timeout_s: float) -> bool | None:
        """Whether the login node's SSH server answers: a TCP connection and its version banner, no
        login (so no process on the node beyond sshd's own). ``None`` when this transport cannot
        tell (a jump host in between, or a link of another kind)."""
        if self.target.jump_host is not None or type(self)._connection is not SshTransport._connection:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
                try:
                    banner = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
        except (OSError, TimeoutError):
            return False
        return banner.startswith(b"SSH-")

    async def _drop(self) -> None:
        for conn in (self._conn, self._jump):
            if conn is not None:
                conn.close()
                with contextlib.suppress(Exception):
                    await conn.wait_closed()
        self._conn = self._jump = None

    async def close(self) -> None:
        await self._drop()


async def _run_once(target: SshTarget, script: str, timeout_s: float) -> CommandResult:
    transport = SshTransport(target)
    try:
        return await transport.run(script, timeout_s=timeout_s)
    finally:
        await transport.close()


async def read_log_tail(transport: SshTransport, path: str, lines: int) -> str:
    """The last ``lines`` lines of a job's output file, for the error when it failed (empty when
    the file cannot be read)."""
    result = await transport.run(f"tail -n {int(lines)} -- {quote(path)} 2>/dev/null\n")
    return result.text


# CommandResult moved to command_result.py: still importable from here.
__all__ = ["CommandResult", "JumpHost", "SshClusterHook", "SshTarget", "SshTransport", "read_log_tail"]
