"""SSH to an EC2 instance through AWS Systems Manager Session Manager: no inbound port, no stored key.

For every SSH connection :class:`SsmTransport`

1. generates a fresh ed25519 key pair in memory (never written anywhere),
2. pushes its public half with EC2 Instance Connect ``SendSSHPublicKey`` (sshd accepts it for 60 s),
3. starts ``aws ssm start-session --document-name AWS-StartSSHSession`` as the byte pipe under the SSH
   connection (the preferred way: no local port), or ``AWS-StartPortForwardingSession`` to a free port
   on 127.0.0.1 (the fallback, for hosts whose SSM document set lacks the SSH one),
4. verifies the instance's host key against keys pinned earlier or read from the instance's serial
   console (:func:`~airflow_hpc_provider.dialects.ec2_boot.host_keys_from_console`), or, only when
   ``host_key_check="off"`` is set in so many words, skips that check with a warning on every connect.

The session command is spawned here, not through asyncssh's ``proxy_command=``: it is the same pipe,
but this way the AWS CLI gets the Airflow connection's credentials through its environment (never on
a command line) and its stderr ends up in the error message (``TargetNotConnected``...).

It is a :class:`~airflow_hpc_provider.hooks.ssh.SshTransport` like any other, so the poller, the log
reader and ``run()`` work over it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from typing import Any

import asyncssh
from botocore.exceptions import ClientError

from airflow_hpc_provider.dialects.ec2 import DEFAULT_OS_USER
from airflow_hpc_provider.dialects.ec2_boot import host_keys_from_console
from airflow_hpc_provider.errors import (
    ClusterAuthError,
    ClusterUnreachableError,
    ConnectionConfigError,
    SsmToolsMissingError,
)
from airflow_hpc_provider.hooks.batch import error_code, error_text
from airflow_hpc_provider.hooks.ec2 import Ec2InstanceHook, is_auth_error
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport

log = logging.getLogger(__name__)

SSH_SESSION_DOCUMENT = "AWS-StartSSHSession"
PORT_FORWARD_DOCUMENT = "AWS-StartPortForwardingSession"
TUNNELS = ("ssh-session", "port-forward")
HOST_KEY_CHECKS = ("console", "pinned", "off")
_STDERR_KEEP_BYTES = 4096
# How long a failed connection waits for the session command to exit and finish its stderr.
SESSION_EXIT_WAIT_S = 2.0

INSTALL_HELP = (
    "Install both on every Airflow host that runs tasks or triggers: the AWS CLI v2 "
    "(https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html) and the Session "
    "Manager plugin (https://docs.aws.amazon.com/systems-manager/latest/userguide/"
    "session-manager-working-with-install-plugin.html), and make sure both are on the PATH of the "
    "Airflow processes."
)


@dataclass(frozen=True)
class SsmTools:
    aws: str
    plugin: str


def find_tools(search_path: str | None = None) -> SsmTools:
    """Both programs an SSM session needs, or an error that names what is missing and how to get it."""
    path = search_path if search_path is not None else os.environ.get("PATH", "")
    aws = shutil.which("aws", path=path)
    plugin = shutil.which("session-manager-plugin", path=path)
    missing = [
        name
        for name, found in (
            ("the AWS CLI ('aws')", aws),
            ("the Session Manager plugin ('session-manager-plugin')", plugin),
        )
        if found is None
    ]
    if missing or aws is None or plugin is None:
        raise SsmToolsMissingError(
            f"an SSM tunnel needs {' and '.join(missing)}, which this host does not have on its PATH. {INSTALL_HELP}"
        )
    return SsmTools(aws=aws, plugin=plugin)


@dataclass(frozen=True)
class SsmTunnelTarget:
    """One instance reached through Session Manager.

    :param host_key_check: ``console`` (default): trust the host keys the instance printed on its serial
        console (our boot script prints them; cloud-init does too); ``pinned``: only ``host_keys``;
        ``off``: no verification, an explicit opt-out scoped to this target, warned about at each connect.
    :param host_keys: ``"ssh-ed25519 AAAA..."`` lines; with ``console`` they are used once known.
    """

    instance_id: str
    aws_conn_id: str | None = "aws_default"
    region_name: str | None = None
    os_user: str = DEFAULT_OS_USER
    tunnel: str = "ssh-session"
    host_key_check: str = "console"
    host_keys: tuple[str, ...] = ()
    connect_timeout_s: float = 30.0
    remote_port: int = 22
    availability_zone: str | None = None

    def __post_init__(self) -> None:
        if self.tunnel not in TUNNELS:
            raise ConnectionConfigError(f"tunnel={self.tunnel!r}: use one of {', '.join(TUNNELS)}")
        if self.host_key_check not in HOST_KEY_CHECKS:
            raise ConnectionConfigError(
                f"host_key_check={self.host_key_check!r}: use one of {', '.join(HOST_KEY_CHECKS)}"
            )
        if self.host_key_check == "pinned" and not self.host_keys:
            raise ConnectionConfigError("host_key_check='pinned' needs host_keys")

    @property
    def where(self) -> str:
        return f"{self.os_user}@{self.instance_id} via SSM ({self.tunnel}, connection {self.aws_conn_id})"

    def ssh_target(self) -> SshTarget:
        """What the base transport reads: the name in messages, the shell, the session cap."""
        return SshTarget(
            conn_id=str(self.aws_conn_id),
            host=self.instance_id,
            port=self.remote_port,
            username=self.os_user,
            look_for_keys=False,
            connect_timeout_s=self.connect_timeout_s,
        )


class SsmTunnelHook(Ec2InstanceHook):
    """The AWS side of an SSM tunnel: key push, console host keys, and the CLI's environment.

    Usable on its own::

        hook = SsmTunnelHook(aws_conn_id="aws_default")
        result = hook.run_script("i-0123456789abcdef0", "uname -a\\n", os_user="ec2-user")
    """

    hook_name = "SSM tunnel (EC2 Instance Connect + Session Manager)"

    def cli_environment(self) -> dict[str, str]:
        """The environment for ``aws ssm start-session``: the connection's own (possibly assumed) credentials."""
        session = self.get_session(region_name=self.region_name)
        credentials = session.get_credentials()
        env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
        env["AWS_DEFAULT_REGION"] = env["AWS_REGION"] = self.region
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            env["AWS_ACCESS_KEY_ID"] = frozen.access_key
            env["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
            if frozen.token:
                env["AWS_SESSION_TOKEN"] = frozen.token
        return env

    def ssm_endpoint(self) -> str | None:
        value = self.conn_config.get_service_endpoint_url(service_name="ssm")
        return str(value) if value else None

    def transport(self, instance_id: str, **options: Any) -> SsmTransport:
        target = SsmTunnelTarget(
            instance_id=instance_id, aws_conn_id=self.aws_conn_id, region_name=self.region_name, **options
        )
        return SsmTransport(target, hook=self)

    def run_script(self, instance_id: str, script: str, **options: Any) -> Any:
        """Run one POSIX shell script on the instance (blocking); returns a ``CommandResult``."""

        async def go() -> Any:
            transport = self.transport(instance_id, **options)
            try:
                return await transport.run(script)
            finally:
                await transport.close()

        return asyncio.run(go())


class _StderrTail:
    """Keeps the last few KB a child process writes to stderr (read continuously so it never blocks)."""

    def __init__(self, stream: asyncio.StreamReader | None) -> None:
        self.data = b""
        self.task = asyncio.get_running_loop().create_task(self._read(stream)) if stream is not None else None

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(4096):
            self.data = (self.data + chunk)[-_STDERR_KEEP_BYTES:]

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace").strip()


class SsmTransport(SshTransport):
    """An :class:`SshTransport` whose link is an SSM session and whose key lives for one connection."""

    def __init__(self, target: SsmTunnelTarget, hook: SsmTunnelHook | None = None) -> None:
        super().__init__(target.ssh_target())
        self.tunnel_target = target
        self._hook = hook
        self._process: asyncio.subprocess.Process | None = None
        self._stderr: _StderrTail | None = None
        self._stdout: _StderrTail | None = None
        # Known after the first connection with host_key_check="console": pin them for later use.
        self.host_keys: tuple[str, ...] = target.host_keys
        self.keys_pushed = 0

    @property
    def hook(self) -> SsmTunnelHook:
        if self._hook is None:
            self._hook = SsmTunnelHook(self.tunnel_target.aws_conn_id, self.tunnel_target.region_name)
        return self._hook

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._connecting:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            await self._drop()
            try:
                self._conn = await self._open()
            except BaseException:
                await self._drop()
                raise
            self.connections_opened += 1
            return self._conn

    async def _open(self) -> asyncssh.SSHClientConnection:
        target = self.tunnel_target
        tools = find_tools()
        host_keys = await self._known_hosts()
        key = asyncssh.generate_private_key("ssh-ed25519")
        public = key.export_public_key("openssh").decode().strip()
        await self._push_key(public)
        env = await asyncio.to_thread(self.hook.cli_environment)
        options: dict[str, Any] = {
            "username": target.os_user,
            "client_keys": [key],
            "connect_timeout": target.connect_timeout_s,
            "keepalive_interval": 30,
            "keepalive_count_max": 3,
            "agent_path": None,  # only the ephemeral key: never offer the Airflow user's agent keys
            "host_keys": host_keys,  # turned into known_hosts once the port is known
        }
        try:
            if target.tunnel == "ssh-session":
                return await self._open_session(tools, env, options)
            return await self._open_port_forward(tools, env, options)
        except asyncssh.PermissionDenied as error:
            raise ClusterAuthError(
                f"SSH to {target.where} refused the key pushed with EC2 Instance Connect ({error}); "
                f"does the instance run ec2-instance-connect and is {target.os_user!r} its user?"
            ) from None
        except asyncssh.HostKeyNotVerifiable as error:
            raise ClusterAuthError(
                f"{target.instance_id} presented a host key that is not the one it published ({error}): refusing"
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as error:
            # SSM's own words (TargetNotConnected, ...) come on the session command's stderr, often
            # just after the connection broke: let it finish saying them.
            exited = await self._session_ended(SESSION_EXIT_WAIT_S)
            detail = self._stderr.text if self._stderr is not None else ""
            why = f"; aws ssm start-session exited {exited}" if exited is not None else ""
            raise ClusterUnreachableError(
                f"cannot reach {target.where}: {type(error).__name__}: {error}{why}"
                + (f": {detail!r}" if detail else "")
            ) from None

    async def _session_ended(self, timeout_s: float) -> int | None:
        """The session command's exit status once it ended (None if it still runs), its stderr read."""
        process = self._process
        if process is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await process.wait()
                if self._stderr is not None and self._stderr.task is not None:
                    await asyncio.shield(self._stderr.task)
        return process.returncode

    async def _known_hosts(self) -> tuple[str, ...] | None:
        target = self.tunnel_target
        if target.host_key_check == "off":
            log.warning(
                "SSH to %s does NOT verify the host key (host_key_check='off' on this task): a man in the "
                "middle of the SSM session would not be noticed",
                target.instance_id,
            )
            return None
        if not self.host_keys:
            try:
                console = await asyncio.to_thread(self.hook.console_output, target.instance_id)
            except ClientError as error:
                raise ClusterUnreachableError(
                    f"GetConsoleOutput of {target.instance_id}: {error_code(error)}: {error_text(error)}"
                ) from None
            self.host_keys = host_keys_from_console(console)
            if not self.host_keys:
                raise ClusterUnreachableError(
                    f"{target.instance_id} has not published its SSH host keys on its console yet"
                )
        return self.host_keys

    def _known_hosts_for(self, keys: tuple[str, ...] | None, port: int) -> Any:
        """known_hosts naming the instance as asyncssh will look it up (``[id]:port`` off port 22)."""
        if keys is None:
            return None
        name = self.tunnel_target.instance_id
        names = name if port == 22 else f"[{name}]:{port}"
        return asyncssh.import_known_hosts("".join(f"{names} {key}\n" for key in keys))

    async def _push_key(self, public: str) -> None:
        target = self.tunnel_target
        try:
            await asyncio.to_thread(
                self.hook.send_ssh_public_key, target.instance_id, target.os_user, public, target.availability_zone
            )
        except ClientError as error:
            message = f"SendSSHPublicKey to {target.instance_id}: {error_code(error)}: {error_text(error)}"
            if is_auth_error(error):
                raise ClusterAuthError(message) from None
            raise ClusterUnreachableError(message) from None
        self.keys_pushed += 1

    def _session_argv(self, tools: SsmTools, document: str, parameters: str) -> list[str]:
        argv = [
            tools.aws,
            "ssm",
            "start-session",
            "--target",
            self.tunnel_target.instance_id,
            "--document-name",
            document,
            "--parameters",
            parameters,
            "--region",
            self.hook.region,
        ]
        endpoint = self.hook.ssm_endpoint()
        if endpoint:
            argv += ["--endpoint-url", endpoint]
        return argv

    async def _open_session(
        self, tools: SsmTools, env: dict[str, str], options: dict[str, Any]
    ) -> asyncssh.SSHClientConnection:
        target = self.tunnel_target
        ours, theirs = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self._session_argv(tools, SSH_SESSION_DOCUMENT, f"portNumber={target.remote_port}"),
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # a Ctrl-C meant for Airflow must not kill the session first
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._stderr = _StderrTail(self._process.stderr)
        known_hosts = self._known_hosts_for(options.pop("host_keys"), target.remote_port)
        return await asyncssh.connect(
            host=target.instance_id, port=target.remote_port, sock=ours, known_hosts=known_hosts, **options
        )

    async def _open_port_forward(
        self, tools: SsmTools, env: dict[str, str], options: dict[str, Any]
    ) -> asyncssh.SSHClientConnection:
        target = self.tunnel_target
        port = _free_port()
        self._process = await asyncio.create_subprocess_exec(
            *self._session_argv(
                tools, PORT_FORWARD_DOCUMENT, f"portNumber={target.remote_port},localPortNumber={port}"
            ),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self._stderr = _StderrTail(self._process.stderr)
        self._stdout = _StderrTail(self._process.stdout)
        async with asyncio.timeout(target.connect_timeout_s):
            while True:
                if self._process.returncode is not None:
                    raise ClusterUnreachableError(
                        f"aws ssm start-session ({PORT_FORWARD_DOCUMENT}) for {target.instance_id} exited "
                        f"{self._process.returncode}: {self._stderr.text!r}"
                    )
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                await asyncio.sleep(0.1)
        known_hosts = self._known_hosts_for(options.pop("host_keys"), port)
        return await asyncssh.connect(
            host="127.0.0.1", port=port, host_key_alias=target.instance_id, known_hosts=known_hosts, **options
        )

    async def _drop(self) -> None:
        await super()._drop()
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for tail in (self._stderr, self._stdout):
            if tail is not None and tail.task is not None:
                tail.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await tail.task
        self._stderr = self._stdout = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
