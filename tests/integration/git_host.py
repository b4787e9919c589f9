"""A git host for the git-pinned code tests: a bare repository reached over its own OpenSSH sshd.

The sshd binds to 127.0.0.1 on a free port, with its own host key, and lets one deploy key in, as
the test cluster's user, restricted to ``git-shell`` (what a deploy key on a forge can do). It is
separate from the cluster's sshd (whose authorised keys ``tests/cluster/up.sh`` rewrites) and
stopped by its PID. The bare repository lives under the cluster user's home with a unique name.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.integration import cluster

SSHD = "/usr/sbin/sshd"
_ROOT_GIT_CONFIG = Path(tempfile.gettempdir()) / "airflow-hpc-githost-gitconfig"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        # The bare repository belongs to the cluster user: let this (root) test process push to it.
        env={**os.environ, "GIT_CONFIG_GLOBAL": str(_ROOT_GIT_CONFIG)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"git {args} exited {done.returncode}: {done.stderr}")
    return done.stdout


@dataclass
class GitHost:
    directory: Path
    port: int
    pid: int
    bare: Path
    work: Path
    deploy_key: str
    host_key: str

    @property
    def url(self) -> str:
        return f"ssh://{cluster.USER}@127.0.0.1:{self.port}{self.bare}"

    def connection_json(self) -> str:
        """An Airflow ``ssh`` connection holding the deploy key and the git host's key."""
        return json.dumps(
            {
                "conn_type": "ssh",
                "host": "127.0.0.1",
                "port": self.port,
                "login": cluster.USER,
                "extra": {"private_key": self.deploy_key, "host_key": self.host_key},
            }
        )

    def commit(self, files: dict[str, str], message: str, branch: str = "main") -> str:
        """Commit ``files`` on ``branch`` and push it to the bare repository; return the new SHA."""
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        _git("add", "-A", cwd=self.work)
        _git("commit", "-q", "-m", message, cwd=self.work)
        _git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        _give_to_cluster_user(self.bare)
        return _git("rev-parse", "HEAD", cwd=self.work).strip()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 15)
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self.bare, ignore_errors=True)
        _ROOT_GIT_CONFIG.unlink(missing_ok=True)


def start() -> GitHost:
    _ROOT_GIT_CONFIG.write_text("[safe]\n\tdirectory = *\n")
    directory = Path(tempfile.mkdtemp(prefix="airflow-hpc-githost-", dir="/tmp"))
    directory.chmod(0o755)  # sshd reads the authorised keys as the user
    for name in ("host_key", "deploy_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(directory / name)], check=True
        )
    keys = directory / "authorized_keys"
    keys.mkdir()
    deploy_public = (directory / "deploy_key.pub").read_text().strip()
    (keys / cluster.USER).write_text(f'restrict,command="git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"" {deploy_public}\n')
    (keys / cluster.USER).chmod(0o644)
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host_key'}\nPidFile {directory / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {keys}/%u\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"StrictModes no\nAllowUsers {cluster.USER}\nLogLevel VERBOSE\n"
    )
    subprocess.run([SSHD, "-f", str(config), "-E", str(directory / "sshd.log")], check=True)
    deadline = time.monotonic() + 30
    while not (directory / "sshd.pid").exists() or not _listening(port):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the git host's sshd did not listen on {port}: {(directory / 'sshd.log').read_text()}"
            )
        time.sleep(0.1)
    pid = int((directory / "sshd.pid").read_text().strip())

    bare = cluster.CLUSTER_DIR / "home" / cluster.USER / f"git-fixture-{uuid.uuid4().hex[:12]}.git"
    _git("init", "-q", "--bare", str(bare))
    _give_to_cluster_user(bare)
    work = directory / "work"
    _git("init", "-q", str(work))
    _git("remote", "add", "origin", str(bare), cwd=work)
    host_public = (directory / "host_key.pub").read_text().split()
    host = GitHost(
        directory=directory,
        port=port,
        pid=pid,
        bare=bare,
        work=work,
        deploy_key=(directory / "deploy_key").read_text(),
        host_key=f"{host_public[0]} {host_public[1]}",
    )
    return host


def _give_to_cluster_user(path: Path) -> None:
    """The repository belongs to the user git serves it as (git refuses a repository of another owner)."""
    owner = pwd.getpwnam(cluster.USER)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    for root, dirs, names in os.walk(path):
        for name in [*dirs, *names]:
            os.chown(os.path.join(root, name), owner.pw_uid, owner.pw_gid)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0
