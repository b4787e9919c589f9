"""Reach the local test cluster the way an operator on the login node would, for test assertions.

Assertions ask Slurm directly (``sacct``, ``squeue``) through the real sshd with the host key
verified, independently of the provider's own code.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = Path(os.environ.get("HPC_CLUSTER_DIR", "/tmp/airflow-hpc-cluster"))
SSH_PORT = 2222
USER = "hpcuser"


def bring_up() -> dict[str, str]:
    """Start the cluster if it is not running (idempotent, fast when up); return its Airflow env."""
    subprocess.run(["bash", str(REPO / "tests/cluster/up.sh")], check=True, capture_output=True, text=True)
    env: dict[str, str] = {}
    for line in (CLUSTER_DIR / "airflow.env").read_text().splitlines():
        name, _, value = line.partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


def connection_extra() -> dict[str, str]:
    conn = json.loads(bring_up()["AIRFLOW_CONN_SLURM_LOCAL"])
    extra: dict[str, str] = conn["extra"]
    return extra


def ssh(command: str, *, check: bool = True, user: str = USER) -> str:
    """Run a command on the login node as the test user (``user``: Grid Engine's, ``sgeuser``); host
    key verified against known_hosts."""
    result = subprocess.run(
        [
            "ssh",
            "-p",
            str(SSH_PORT),
            "-i",
            str(CLUSTER_DIR / "ssh/id_ed25519"),
            "-o",
            f"UserKnownHostsFile={CLUSTER_DIR / 'ssh/known_hosts'}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            f"{user}@127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ssh {command!r} exited {result.returncode}: {result.stderr}")
    return result.stdout


# States after which slurmdbd's record of a job no longer changes.
_UNFINISHED = ("PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "COMPLETING")


def sacct_row(job_id: str, fields: str = "JobIDRaw,State,ExitCode,JobName%300,Comment%100") -> list[str]:
    """The allocation row of a job that has ended, from Slurm's accounting, split into fields.

    slurmctld sends a job's end to slurmdbd asynchronously: right after a task saw its job end,
    sacct may still show it running, or not at all, or (when the end reached slurmdbd before the
    start) a stand-in row with no partition and ReqMem "16?" (seen in CI). Ask again (up to 30 s)
    until the row is final and whole.
    """
    query = f"sacct -n -P -X -j {shlex.quote(job_id)} -o State,Partition,{fields}"
    deadline = time.monotonic() + 30
    while True:
        out = ssh(query)
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        final = len(rows) == 1 and not rows[0][0].startswith(_UNFINISHED) and rows[0][1] != ""
        if final or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(rows) == 1, f"sacct has {len(rows)} rows for job {job_id}: {out!r}"
    return rows[0][2:]


def job_name(job_id: str) -> str:
    """The job's name as slurmctld holds it (slurmdbd stores '"' as '`', so sacct cannot tell)."""
    out = ssh(f"squeue -h -t all -j {shlex.quote(job_id)} -O 'Name:|'")
    return out.rstrip("\n").removesuffix("|")


def jobs_with_comment_prefix(prefix: str) -> list[str]:
    """Every job in accounting whose comment starts with ``prefix`` (any state, any age)."""
    out = ssh("sacct -n -P -X -a -S now-1days -o JobIDRaw,Comment%100")
    return [line.split("|")[0] for line in out.splitlines() if line.split("|")[-1].startswith(prefix)]


def wait_for(job_id: str, states: set[str], timeout_s: float = 60) -> str:
    """Wait until squeue (or sacct, once the job left the queue) shows one of ``states``."""
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = ssh(f"squeue -h -t all -j {shlex.quote(job_id)} -o %T", check=False).strip()
        if not state:
            state = ssh(f"sacct -n -X -P -j {shlex.quote(job_id)} -o State", check=False).strip().split(" ")[0]
        if state in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} is {state!r}, not one of {sorted(states)}, after {timeout_s}s")
