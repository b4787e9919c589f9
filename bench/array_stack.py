"""Benchmark: N mapped ``SlurmSubmitOperator`` task instances through a real Airflow deployment,
submitted as Slurm job arrays (arrays ON) and one job per instance (``array=False``, arrays OFF).

Prints figures side by side, asserts nothing (issue 14). ``bench/array_submission.py`` drives the
element triggers directly; this bench runs the whole path a user runs: a DAG file in a dags
folder, the dag-processor parsing it, one DAG run triggered through the REST API, the scheduler
expanding the mapped task and queuing its instances, LocalExecutor worker slots starting them, the
workers deferring (ON: at once, the triggerer submits the arrays; OFF: after submitting their own
job over their own SSH connection), and the triggerer watching.

The deployment is ``tests/deployment/stack.py``'s ``AirflowStack`` (api-server, scheduler,
dag-processor, one triggerer, LocalExecutor, SQLite) with ``[core] parallelism`` 8 worker slots
(``--slots``). Each mode gets a fresh stack in a fresh ``AIRFLOW_HOME`` (started before its run
and stopped by PID after it), so every mode starts from the same cold deployment and one mode's
open connections never serve the other. Its one Slurm connection points at the PRIVATE slurmctld
and sshd of ``array_submission.PrivateCluster`` (free 127.0.0.1 ports, ``MaxArraySize`` 6, OpenSSH
defaults ``MaxStartups 10:30:100``), imported from there, never at the shared test cluster (whose
counters other engineers' runs use); the shared cluster's Slurm connections are removed from the
stack's environment. Must run as root (it starts sshd) on the shared test cluster's machine.

The DAG: ``SlurmSubmitOperator.partial(..., extra_options=["--hold"], array=True|False,
poll_interval=60).expand(env=[{"SAMPLE": ...} x N])``, ``max_active_tasks=N``, written to a
temporary dags folder per mode. ``array=True`` makes "not an array" an error of the task instead of
a quiet fallback, so the ON row cannot silently measure single jobs.

**Held jobs, measured to "all N known to slurmctld".** Every job is submitted held: slurmctld
creates its record (and counts the ``sbatch``), no node ever runs it. The private slurmctld has no
slurmd on purpose: the issue's figures (submissions, logins, time until the cluster has the work)
are all on the submission path this issue changes, while "all N RUNNING" on this machine would
time something else. A node of the private cluster runs at most its CPUs' worth of one-CPU jobs at
once (32 advertised on 2 real cores), so 100 or 1,000 are never RUNNING together, and "all have
started" would time slurmstepd launching N jobs on two cores shared with other engineers' test runs
(and disturb them). So the wall-time column runs from the REST call that creates the DAG run to the
first moment the private slurmctld lists all N jobs or elements (``squeue -r -n <job name>``, run
locally every 0.5 s, no SSH). The DAG run never finishes (its instances stay deferred on PENDING
jobs): once all N are known and all N instances are ``deferred`` (so the OFF workers' and the
triggerer's logins are all in), the row is counted, the stack stopped, and the jobs cancelled by id.

The figures, and where each is counted:

* **sbatch calls**: the private slurmctld's ``REQUEST_SUBMIT_BATCH_JOB`` count (``sdiag``), before
  the DAG run and after the row;
* **SSH logins at the login node**: ``Accepted publickey`` lines in the private sshd's log during
  the row;
* **Airflow processes that connected**: a sampler thread reads ``/proc/net/tcp`` every 50 ms for
  established connections to the private sshd's port, finds each new socket's owning process
  through ``/proc/<pid>/fd`` (a process is its PID and start time: PIDs wrap at 32,768 here during
  a long row) and the stack component it descends from; each login's client port
  in the sshd log is matched to a sampled socket. It prints the distinct processes per component
  and how many logins it attributed (a connection that opens and closes between two samples stays
  unattributed and is shown as such, never guessed);
* **s to all N known to slurmctld** (above), and **s to all N deferred** (the API's task instance
  states, polled once a second after all N are known).

Beside them, the minimum: ``ceil(N / MaxArraySize)`` submissions over one connection of one
process. The issue's target at N = 1,000: at most ``ceil(N / MaxArraySize) + 2`` submissions and at
most one SSH connection per Airflow process.

    .venv/bin/python bench/array_stack.py [--sizes 100] [--slots 8] [--modes on,off]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.deployment.stack

from array_submission import (
    CONN_ID,
    MAX_ARRAY_SIZE,
    PrivateCluster,
    add_cluster_arguments,
    shared_connection,
    versions,
)
from slurm_poller import REMOTE_ROOT

from tests.deployment.stack import AirflowStack, Component, StackError

DEFAULT_SLOTS = 8
SAMPLE_INTERVAL_S = 0.05
KNOWN_POLL_S = 0.5
# Connections the stack must never see: the shared test cluster's (the env file defines them).
SHARED_CONNECTIONS = ("AIRFLOW_CONN_SLURM_LOCAL", "AIRFLOW_CONN_PBS_LOCAL", "AIRFLOW_CONN_SGE_LOCAL")
SHARED_NAMES = (*SHARED_CONNECTIONS, "SLURM_CONF")

DAG_TEMPLATE = '''\
"""Written by bench/array_stack.py: {n} mapped task instances, arrays {mode}."""

from datetime import datetime

from airflow.sdk import DAG

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

with DAG(
    dag_id={dag_id!r},
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    max_active_tasks={n},
):
    SlurmSubmitOperator.partial(
        task_id="mapped",
        slurm_conn_id={conn_id!r},
        job_name={job_name!r},
        memory="16M",
        command='echo "input $SAMPLE"',
        extra_options=["--hold"],
        poll_interval=60,
        array={array!r},
    ).expand(env=[{{"SAMPLE": f"sample_{{index:04d}}"}} for index in range({n})])
'''


@dataclass
class StackRow:
    n: int
    mode: str
    submissions: int
    logins: int
    processes: dict[str, dict[tuple[int, int], int]]  # component -> (pid, start time) -> logins
    attributed: int
    known_s: float
    deferred_s: float | None
    stack_up_s: float
    jobs_cancelled: int = 0


# --- which process opened which connection ------------------------------------------------------


@dataclass
class ConnectionSampler:
    """Samples the client sockets connected to ``port`` and the stack component owning each."""

    port: int
    components: list[Component]
    # client port -> ((pid, start time in clock ticks), component): PIDs wrap (pid_max 32768 here)
    # during a long row, so a process is its PID and its start time.
    by_client_port: dict[int, tuple[tuple[int, int], str]] = field(default_factory=dict)
    _seen_inodes: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="connection-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.sample()
            self._stop.wait(SAMPLE_INTERVAL_S)

    def sample(self) -> None:
        new: dict[str, int] = {}
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                    if (
                        state == "01"
                        and int(remote.rsplit(":", 1)[1], 16) == self.port
                        and inode not in self._seen_inodes
                    ):
                        new[inode] = int(local.rsplit(":", 1)[1], 16)
        if not new:
            return
        owners = self._owners(set(new))
        for inode, client_port in new.items():
            if inode in owners:
                self._seen_inodes.add(inode)
                pid = owners[inode]
                self.by_client_port[client_port] = ((pid, started_at(pid)), self._component_of(pid))

    @staticmethod
    def _owners(inodes: set[str]) -> dict[str, int]:
        wanted = {f"socket:[{inode}]": inode for inode in inodes}
        found: dict[str, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                for fd in os.scandir(f"/proc/{entry.name}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd.path)
                        if target in wanted:
                            found[wanted[target]] = int(entry.name)
        return found

    def _component_of(self, pid: int) -> str:
        names = {component.pid: component.name for component in self.components}
        current = pid
        for _ in range(64):
            if current in names:
                return names[current]
            try:
                stat = Path(f"/proc/{current}/stat").read_text()
            except OSError:
                break
            current = int(stat.rpartition(")")[2].split()[1])  # ppid
            if current <= 1:
                break
        return "not an Airflow component"


def in_state(stack: AirflowStack, dag_id: str, run_id: str, state: str) -> int:
    """How many of the run's task instances are in ``state`` (the API's count: its pages hold 100)."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
    total: int = stack.get(path, state=state, limit=1)["total_entries"]
    return total


def started_at(pid: int) -> int:
    """The process's start time since boot, in clock ticks (``/proc/<pid>/stat`` field 22)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


def login_ports(log: Path, offset: int) -> list[int]:
    """The client port of every ``Accepted publickey`` line sshd logged since ``offset``."""
    with log.open("rb") as file:
        file.seek(offset)
        text = file.read().decode(errors="replace")
    return [int(port) for port in re.findall(r"Accepted publickey for \S+ from \S+ port (\d+)", text)]


# --- one mode, one stack ------------------------------------------------------------------------


class StackBench:
    def __init__(self, cluster: PrivateCluster, connection: str, slots: int, workdir: Path) -> None:
        self.cluster = cluster
        self.connection = connection
        self.slots = slots
        self.workdir = workdir
        self.token = secrets.token_hex(3)

    def job_name(self, mode: str, n: int) -> str:
        return f"arraystack-{self.token}-{mode}-{n}"

    def write_dag(self, folder: Path, dag_id: str, mode: str, n: int) -> None:
        folder.mkdir(parents=True)
        source = DAG_TEMPLATE.format(
            n=n,
            mode=mode.upper(),
            dag_id=dag_id,
            conn_id=CONN_ID,
            job_name=self.job_name(mode, n),
            array=mode == "on",
        )
        (folder / f"{dag_id}.py").write_text(source)

    def known(self, name: str) -> int:
        return self.cluster.listed(name)

    def run(self, mode: str, n: int) -> StackRow:
        dag_id = f"arraystack_{mode}_{n}"
        home = self.workdir / f"{mode}-{n}"
        dags = home / "dags"
        self.write_dag(dags, dag_id, mode, n)
        stack = AirflowStack(
            home, dags, extra_env={f"AIRFLOW_CONN_{CONN_ID.upper()}": self.connection}, parallelism=self.slots
        )
        for name in SHARED_NAMES:
            stack.env.pop(name, None)
        name = self.job_name(mode, n)
        sampler: ConnectionSampler | None = None
        try:
            started = time.monotonic()
            stack.start(triggerers=1)
            stack.wait_for_dag(dag_id, timeout_s=300)
            stack_up = time.monotonic() - started
            sampler = ConnectionSampler(self.cluster.ssh_port, stack.components)
            sampler.start()
            submissions_before, offset = self.cluster.submissions(), self.cluster.sshd_offset()

            began = time.monotonic()
            run = stack.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {}})
            run_id: str = run["dag_run_id"]
            print(f"  {mode.upper()} N={n}: DAG run {run_id} created", file=sys.stderr, flush=True)
            checked = [began]

            def all_known() -> bool:
                if self.known(name) >= n:
                    return True
                if time.monotonic() - checked[0] > 10:  # a failed run would otherwise wait for the timeout
                    checked[0] = time.monotonic()
                    failed = in_state(stack, dag_id, run_id, "failed")
                    if failed or stack.dag_run(dag_id, run_id)["state"] == "failed":
                        raise RuntimeError(f"arrays {mode}: the DAG run failed ({failed} failed instances)")
                return False

            stack.wait(all_known, 600 + 6 * n, f"all {n} jobs known to slurmctld", interval_s=KNOWN_POLL_S)
            known_s = time.monotonic() - began
            print(f"  {mode.upper()} N={n}: all known after {known_s:.1f}s", file=sys.stderr, flush=True)
            deferred_s: float | None = None
            with contextlib.suppress(StackError):
                stack.wait(lambda: in_state(stack, dag_id, run_id, "deferred") >= n, 300 + n, f"all {n} deferred")
                deferred_s = time.monotonic() - began
            time.sleep(1)  # the last logins reach sshd's log
            sampler.stop()  # then one last sample, from this thread alone
            sampler.sample()
            submissions = self.cluster.submissions() - submissions_before
            ports = login_ports(self.cluster.sshd_log, offset)
            processes: dict[str, dict[tuple[int, int], int]] = {}
            attributed = 0
            for port in ports:
                owner = sampler.by_client_port.get(port)
                if owner is not None:
                    attributed += 1
                    per_pid = processes.setdefault(owner[1], {})
                    per_pid[owner[0]] = per_pid.get(owner[0], 0) + 1
            return StackRow(n, mode, submissions, len(ports), processes, attributed, known_s, deferred_s, stack_up)
        finally:
            if sampler is not None:
                sampler.stop()
            stack.stop()
            self.cancel(name)

    def cancel(self, name: str) -> None:
        """Cancel this row's jobs by id (array job ids for arrays), after the stack stopped."""
        ids = sorted(set(self.cluster.local("squeue", "-h", "-n", name, "-o", "%F").split()))
        self.cluster.cancel(ids)
        left = self.known(name)
        if left:
            print(f"  WARNING: {left} jobs named {name} still listed after scancel", file=sys.stderr)

    def clean(self) -> None:
        import pwd

        login = json.loads(self.connection)["login"]
        log_dir = json.loads(self.connection)["extra"]["log_dir"]
        shutil.rmtree(Path(pwd.getpwnam(login).pw_dir) / log_dir, ignore_errors=True)


# --- output ---------------------------------------------------------------------------------------

HEADERS = [
    "N",
    "mode",
    "sbatch calls (sdiag)",
    "SSH logins at the login node (sshd log)",
    "Airflow processes that connected (logins attributed)",
    "s from DAG run start to all N known to slurmctld",
    "s to all N deferred",
    "s to all N RUNNING",
]


def process_count(row: StackRow) -> int:
    return sum(len(pids) for pids in row.processes.values())


def most_logins_of_one_process(row: StackRow) -> int:
    return max((count for pids in row.processes.values() for count in pids.values()), default=0)


def describe(row: StackRow) -> str:
    # LocalExecutor's task processes descend from the scheduler; ON-mode workers never connect.
    labels = {"scheduler": "task processes (LocalExecutor, under the scheduler)"}
    parts = ", ".join(f"{labels.get(name, name)} {len(pids)}" for name, pids in sorted(row.processes.items()))
    return (
        f"{process_count(row)} ({parts}; at most {most_logins_of_one_process(row)} each; "
        f"{row.attributed}/{row.logins} logins attributed)"
    )


def print_table(rows: Sequence[StackRow], slots: int) -> None:
    print("| " + " | ".join(HEADERS) + " |")
    print("|" + "|".join("---" for _ in HEADERS) + "|")
    for n in sorted({row.n for row in rows}):
        floor = math.ceil(n / MAX_ARRAY_SIZE)
        print(f"| {n} | the minimum: ceil(N/MaxArraySize) arrays, 1 connection | {floor} | 1 | 1 | n/a | n/a | n/a |")
        for row in (row for row in rows if row.n == n):
            mode = "arrays ON" if row.mode == "on" else f"arrays OFF (array=False), {slots} worker slots"
            deferred = "?" if row.deferred_s is None else f"{row.deferred_s:.1f}"
            cells = [str(n), mode, str(row.submissions), str(row.logins), describe(row), f"{row.known_s:.1f}"]
            print("| " + " | ".join([*cells, deferred, "n/a (held)"]) + " |")
    print()
    for n in sorted({row.n for row in rows}):
        on = next((row for row in rows if row.n == n and row.mode == "on"), None)
        off = next((row for row in rows if row.n == n and row.mode == "off"), None)
        if on is None:
            continue
        limit = math.ceil(n / MAX_ARRAY_SIZE) + 2
        each = most_logins_of_one_process(on)
        met = on.submissions <= limit and each <= 1 and on.attributed == on.logins
        line = (
            f"N={n}: arrays ON {on.submissions} sbatch calls (target <= ceil({n}/{MAX_ARRAY_SIZE})+2 = {limit}), "
            f"{on.logins} SSH login(s) by {process_count(on)} Airflow process(es), at most {each} each "
            f"(target <= 1 per Airflow process): " + ("met" if met else "NOT met")
        )
        if off is not None:
            line += (
                f"; arrays OFF {off.submissions} sbatch calls, {off.logins} logins, "
                f"{off.known_s / on.known_s:.2f}x the wall time of ON"
            )
        print(line)


# --- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100", help="mapped task instances per DAG run (default 100)")
    parser.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help="[core] parallelism (default 8)")
    parser.add_argument("--modes", default="on,off", help="rows per N, of on,off (default both)")
    add_cluster_arguments(parser)
    args = parser.parse_args(argv)
    shared_conn = shared_connection(parser, args)
    for name in SHARED_CONNECTIONS:  # no stack started here may reach the shared cluster (SLURM_CONF: run())
        os.environ.pop(name, None)
    cluster = PrivateCluster(Path(args.shared_cluster))
    workdir = Path(tempfile.mkdtemp(prefix="airflow-hpc-arraystack-"))
    rows: list[StackRow] = []
    bench: StackBench | None = None
    started = time.monotonic()
    try:
        cluster.start()
        conn = json.loads(cluster.connection(shared_conn))
        token = secrets.token_hex(3)
        conn["extra"]["log_dir"] = f"{REMOTE_ROOT}/arraystack-{token}"  # under the login user's home
        bench = StackBench(cluster, json.dumps(conn), args.slots, workdir)
        for n in [int(size) for size in args.sizes.split(",")]:
            for mode in args.modes.split(","):
                row = bench.run(mode, n)
                rows.append(row)
                print(f"  done: N={n} arrays {mode.upper()}: {row.known_s:.1f}s", file=sys.stderr, flush=True)
    finally:
        if bench is not None:
            bench.clean()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    took = time.monotonic() - started
    stacks = ", ".join(f"{row.mode.upper()} N={row.n} {row.stack_up_s:.0f} s" for row in rows)
    print(
        textwrap.fill(
            f"Real Airflow stack (api-server, scheduler, dag-processor, 1 triggerer, LocalExecutor with "
            f"{args.slots} worker slots, SQLite), a fresh one per row (up and DAG parsed in: {stacks}); held jobs "
            f"(never run); MaxArraySize {MAX_ARRAY_SIZE}; a private slurmctld and sshd on this machine (see the "
            f"docstring). {versions()}. Whole run {took:.0f} s.",
            width=110,
        )
        + "\n"
    )
    print_table(rows, args.slots)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
