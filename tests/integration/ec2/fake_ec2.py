"""What stands in for an EC2 instance in these tests, all of it real processes on this host.

* ``aws``: a small program first on PATH that behaves like ``aws ssm start-session``: with
  ``AWS-StartSSHSession`` it pipes stdin/stdout to the local sshd (127.0.0.1:2222), with
  ``AWS-StartPortForwardingSession`` it listens on the local port and forwards. It records its argv.
* ``session-manager-plugin``, ``docker`` (runs the container's command locally), ``poweroff`` (records).
* moto (server mode, in this process) is extended where an instance would act on its own:
  ``SendSSHPublicKey`` installs the key for the sshd's user with a 60 s ``expiry-time`` (what
  ec2-instance-connect does on an instance), ``RunInstances`` boots the instance by running its
  user-data with bash in the background, ``GetConsoleOutput`` returns what that script printed on
  its "console", ``TerminateInstances`` kills it. Only moto is patched; the provider runs unchanged.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moto.core.types import Base64EncodedString
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.instances import Instance, InstanceBackend, InstanceState, StateReason
from moto.ec2.responses.general import General
from moto.ec2instanceconnect.responses import Ec2InstanceConnectResponse

SSH_DIR = Path("/tmp/airflow-hpc-cluster/ssh")
# The instance's login user. Its own account on this host (not the cluster's hpcuser) because
# tests/cluster/up.sh rewrites hpcuser's authorized keys whenever anyone brings the cluster up, which
# would wipe the keys pushed here mid-test. Created once (idempotent), like up.sh creates hpcuser.
SSH_USER = "ec2-user"
SSH_USER_HOME = Path("/tmp/airflow-hpc-ec2-user-home")
AUTHORIZED_KEYS = SSH_DIR / "authorized_keys.d" / SSH_USER
SSHD_PORT = 2222
# World-traversable: the runner (root here) writes, hpcuser reads over SSH. pytest's tmp is 0700.
SCRATCH_ROOT = Path("/tmp/airflow-hpc-ec2-tests")

AWS_STAND_IN = r'''#!{python}
"""Stand-in for `aws ssm start-session` (tests only): pipes to the local sshd, records argv."""
import json, os, socket, sys, threading
STATE = {state!r}
SSHD = ("127.0.0.1", {port})
argv = sys.argv[1:]
with open(os.path.join(STATE, "aws-calls.jsonl"), "a") as f:
    f.write(json.dumps({{"argv": argv, "credentials": "AWS_ACCESS_KEY_ID" in os.environ}}) + "\n")
if argv[:1] == ["--version"]:
    print("aws-cli/2.99.0 stand-in"); sys.exit(0)
if argv[:2] != ["ssm", "start-session"]:
    print("stand-in aws: only 'ssm start-session'", file=sys.stderr); sys.exit(2)
opts = dict(zip(argv[2::2], argv[3::2]))
target = opts["--target"]
for refusal in ("tunnel-fail", "terminated"):
    if os.path.exists(os.path.join(STATE, refusal, target)):
        print("An error occurred (TargetNotConnected) when calling the StartSession operation: "
              + target + " is not connected.", file=sys.stderr)
        sys.exit(254)
if os.path.exists(os.path.join(STATE, "sshd-refuses", target)):
    SSHD = ("127.0.0.1", {closed_port})  # SSM reaches the instance, but nothing listens on port 22
params = dict(p.split("=", 1) for p in opts["--parameters"].split(","))

def pump(read, write, done):
    try:
        while True:
            data = read()
            if not data:
                break
            write(data)
    except OSError:
        pass
    done.set()

if opts["--document-name"] == "AWS-StartSSHSession":
    sock = socket.create_connection(SSHD)
    done = threading.Event()
    out = sys.stdout.buffer
    def to_stdout(data):
        out.write(data); out.flush()
    threading.Thread(target=pump, args=(lambda: os.read(0, 65536), sock.sendall, done), daemon=True).start()
    threading.Thread(target=pump, args=(lambda: sock.recv(65536), to_stdout, done), daemon=True).start()
    done.wait()
    sys.exit(0)
if opts["--document-name"] == "AWS-StartPortForwardingSession":
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(params["localPortNumber"])))
    server.listen(4)
    print("Starting session with SessionId: stand-in", flush=True)
    print("Port " + params["localPortNumber"] + " opened for sessionId stand-in.", flush=True)
    print("Waiting for connections...", flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection(SSHD)
        done = threading.Event()
        for source, sink in ((client, upstream), (upstream, client)):
            reader = lambda s=source: s.recv(65536)
            threading.Thread(target=pump, args=(reader, sink.sendall, done), daemon=True).start()
print("stand-in aws: unknown document", file=sys.stderr)
sys.exit(2)
'''

DOCKER_STAND_IN = r"""#!/bin/bash
# Stand-in for docker (tests only): `run` executes the container's command on this host.
STATE={state}
printf '%s\n' "$*" >> "$STATE/docker-calls.log"
case "$1" in
  pull) case "$2" in missing/*) echo "pull access denied for $2" >&2; exit 1;; esac; echo "pulled $2"; exit 0;;
  rm|kill) exit 0;;
  run) shift;;
  *) echo "stand-in docker: $1 unsupported" >&2; exit 2;;
esac
names=(); mounts=(); entry=
while [ $# -gt 0 ]; do
  case "$1" in
    --rm|--init) shift;;
    --name) shift 2;;
    -e) names+=("$2"); shift 2;;
    -v) mounts+=("$2"); shift 2;;
    --entrypoint) entry=$2; shift 2;;
    -*) echo "stand-in docker: option $1 unsupported" >&2; exit 2;;
    *) break;;
  esac
done
shift  # the image
args=()
for a in "$@"; do
  for m in "${mounts[@]}"; do
    src=${m%%:*}; rest=${m#*:}; dst=${rest%%:*}
    [ "$a" = "$dst" ] && a=$src
  done
  args+=("$a")
done
envs=()
for n in "${names[@]}"; do envs+=("$n=${!n}"); done
exec env -i PATH=/usr/bin:/bin HOME=/tmp "${envs[@]}" "$entry" "${args[@]}"
"""

POWEROFF_STAND_IN = r"""#!/bin/sh
# Stand-in for poweroff (tests only): records which instance asked.
printf '%s\n' "${AIRFLOW_HPC_TEST_INSTANCE:-unknown}" >> {state}/poweroffs
"""


@dataclass
class StandIns:
    """The stand-in programs in ``bin`` and what they recorded in ``state``."""

    root: Path
    bin: Path
    state: Path

    @classmethod
    def create(cls, root: Path) -> StandIns:
        bin_dir, state = root / "bin", root / "state"
        for directory in (bin_dir, state, state / "tunnel-fail", state / "terminated", state / "sshd-refuses"):
            directory.mkdir(parents=True, exist_ok=True)
        programs = {
            "aws": AWS_STAND_IN.format(
                python=sys.executable, state=str(state), port=SSHD_PORT, closed_port=closed_port()
            ),
            "session-manager-plugin": "#!/bin/sh\necho 1.2.0.0-stand-in\n",
            "docker": DOCKER_STAND_IN.replace("{state}", _sh(str(state))),
            "poweroff": POWEROFF_STAND_IN.replace("{state}", _sh(str(state))),
        }
        for name, text in programs.items():
            path = bin_dir / name
            path.write_text(text)
            path.chmod(0o755)
        return cls(root=root, bin=bin_dir, state=state)

    def path_with_stand_ins(self) -> str:
        return f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"

    def aws_calls(self) -> list[dict[str, Any]]:
        path = self.state / "aws-calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def poweroffs(self) -> list[str]:
        path = self.state / "poweroffs"
        return path.read_text().split() if path.exists() else []

    def fail_tunnel(self, instance_id: str) -> None:
        (self.state / "tunnel-fail" / instance_id).touch()

    def refuse_ssh(self, instance_id: str) -> None:
        (self.state / "sshd-refuses" / instance_id).touch()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def local_host_key() -> str:
    return " ".join((SSH_DIR / "ssh_host_ed25519_key.pub").read_text().split()[:2])


@dataclass
class FakeInstances:
    """moto's EC2 extended so that instances boot (run their user-data here) and accept pushed keys."""

    stand_ins: StandIns
    boot: bool = True
    launch_error: str | None = None  # the next RunInstances fails with this error code
    # New instances stay pending with this EC2 state reason (code, message), and never boot.
    stay_pending: tuple[str, str] | None = None
    # What a new instance's tunnel does: "ssm-refuses" (TargetNotConnected) or "sshd-refuses".
    tunnel_fault: str | None = None
    refuse_keys: set[str] = field(default_factory=set)  # instances whose sshd ignores pushed keys
    pushed: list[dict[str, str]] = field(default_factory=list)
    consoles: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    marker: str = field(default_factory=lambda: f"airflow-hpc-test-{uuid.uuid4().hex[:8]}")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> Iterator[None]:
        originals = (
            InstanceBackend.run_instances,
            Instance.terminate,
            General.get_console_output,
            Ec2InstanceConnectResponse.send_ssh_public_key,
        )
        fake = self

        def run_instances(backend: Any, *args: Any, **kwargs: Any) -> Any:
            if fake.launch_error:
                code, fake.launch_error = fake.launch_error, None
                raise EC2ClientError(code, "injected by the test: no capacity")
            reservation = originals[0](backend, *args, **kwargs)
            for instance in reservation.instances:
                if fake.tunnel_fault == "ssm-refuses":
                    fake.stand_ins.fail_tunnel(instance.id)
                elif fake.tunnel_fault == "sshd-refuses":
                    fake.stand_ins.refuse_ssh(instance.id)
                if fake.stay_pending is not None:
                    instance._state = InstanceState("pending", 0)
                    instance.state_reason = StateReason(message=fake.stay_pending[1], code=fake.stay_pending[0])
                elif fake.boot and instance.user_data:
                    fake.start(instance.id, instance.user_data.decode())
            return reservation

        def terminate(instance: Instance) -> Any:
            fake.stop(instance.id)
            return originals[1](instance)

        def get_console_output(response: General) -> Any:
            instance_id = response._get_param("InstanceId")
            result = originals[2](response)
            text = fake.console_text(instance_id)
            if text is not None:
                result.result["Output"] = Base64EncodedString.from_raw_string(text)  # type: ignore[index]
            return result

        def send_ssh_public_key(response: Ec2InstanceConnectResponse) -> str:
            body = json.loads(response.body or "{}")
            fake.pushed.append(
                {
                    "instance": body.get("InstanceId"),
                    "user": body.get("InstanceOSUser"),
                    "key": body.get("SSHPublicKey"),
                }
            )
            if body.get("InstanceId") not in fake.refuse_keys:
                fake.authorize(str(body["SSHPublicKey"]))
            return str(originals[3](response))

        InstanceBackend.run_instances = run_instances  # type: ignore[method-assign]
        Instance.terminate = terminate  # type: ignore[method-assign]
        General.get_console_output = get_console_output  # type: ignore[method-assign]
        Ec2InstanceConnectResponse.send_ssh_public_key = send_ssh_public_key  # type: ignore[method-assign]
        try:
            yield
        finally:
            (
                InstanceBackend.run_instances,
                Instance.terminate,
                General.get_console_output,
                Ec2InstanceConnectResponse.send_ssh_public_key,
            ) = originals  # type: ignore[method-assign]
            for instance_id in list(self.processes):
                self.stop(instance_id)
            self.unauthorize_all()

    # -- the instance's sshd: EC2 Instance Connect -----------------------------------------------------

    def authorize(self, public_key: str) -> None:
        """Like ec2-instance-connect: the key works for 60 s (OpenSSH's expiry-time does the expiring)."""
        expiry = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=60)).strftime("%Y%m%d%H%M%SZ")
        with self.lock, AUTHORIZED_KEYS.open("a") as keys:
            keys.write(f'expiry-time="{expiry}" {public_key.strip()} {self.marker}\n')

    def unauthorize_all(self) -> None:
        with self.lock:
            lines = AUTHORIZED_KEYS.read_text().splitlines(keepends=True)
            AUTHORIZED_KEYS.write_text("".join(line for line in lines if self.marker not in line))

    # -- booting ---------------------------------------------------------------------------------------

    def console_path(self, instance_id: str) -> Path:
        return self.stand_ins.state / f"{instance_id}.console"

    def console_text(self, instance_id: str) -> str | None:
        if instance_id in self.consoles:
            return self.consoles[instance_id]
        path = self.console_path(instance_id)
        return path.read_text() if path.exists() else None

    def start(self, instance_id: str, user_data: str) -> None:
        script = self.stand_ins.state / f"{instance_id}.user-data"
        script.write_text(user_data)
        env = {
            **os.environ,
            "PATH": self.stand_ins.path_with_stand_ins(),
            "AIRFLOW_HPC_CONSOLE": str(self.console_path(instance_id)),
            "AIRFLOW_HPC_HOST_KEY_DIR": str(SSH_DIR),
            "AIRFLOW_HPC_TEST_INSTANCE": instance_id,
        }
        log = (self.stand_ins.state / f"{instance_id}.boot.log").open("ab")
        self.processes[instance_id] = subprocess.Popen(
            ["bash", str(script)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self, instance_id: str) -> None:
        (self.stand_ins.state / "terminated" / instance_id).touch()
        process = self.processes.pop(instance_id, None)
        if process is not None:
            kill_session(process)


def ensure_ssh_user() -> None:
    if subprocess.run(["id", SSH_USER], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "-m", "-d", str(SSH_USER_HOME), "-s", "/bin/bash", "-U", SSH_USER],
            check=True,
            capture_output=True,
        )
    # No password, but not locked: sshd without PAM refuses a locked account even for a key.
    subprocess.run(["usermod", "-p", "*", SSH_USER], check=True, capture_output=True)
    AUTHORIZED_KEYS.touch(mode=0o644, exist_ok=True)


def kill_session(process: subprocess.Popen[bytes]) -> None:
    """Kill everything a booted instance started: its session, not just its process group (`timeout`
    puts the container command in a process group of its own, the session stays the same)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == process.pid:  # field 6 of stat: the session id
                os.kill(int(entry.name), signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def scratch_dir() -> Path:
    SCRATCH_ROOT.mkdir(mode=0o755, exist_ok=True)
    SCRATCH_ROOT.chmod(0o755)
    path = SCRATCH_ROOT / uuid.uuid4().hex[:12]
    path.mkdir(mode=0o755)
    return path


def remove_scratch(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
