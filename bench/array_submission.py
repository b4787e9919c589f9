"""Benchmark: N mapped ``SlurmSubmitOperator`` task instances as Slurm job arrays vs one job each.

Prints figures side by side, asserts nothing (issue 14). For every N in ``--sizes`` four rows:

* ``the floor``: ``ceil(N / MaxArraySize)`` submissions over one connection, computed;
* ``measured floor``: the physical minimum over SSH, measured: one connection, one exec running
  ``ceil(N / MaxArraySize)`` plain ``sbatch --hold --array`` calls in a row;
* ``arrays ON``: N ``SlurmArrayElementTrigger`` on one event loop, built as the operator builds
  them (one group, ``expected=N``), driven as the triggerer drives them (each ``run()`` in its
  own task): the triggerer collects them and submits them as arrays over its one connection;
* ``arrays OFF``: what the same mapped task costs without arrays: every task instance is a worker
  that opens its own SSH connection (a fresh ``SshTransport``) and runs the single-job submission
  (``hooks.slurm.submit_job``), ``--slots`` instances at once (the deployment's worker slots).
  The slots are tasks of this one process, each with its own TCP connection, handshake and login,
  which is what the login node sees from as many worker processes; the workers' own client CPU
  (spread over processes in a deployment) is not modelled. A connection sshd drops past
  ``MaxStartups`` fails that task instance's try; here it is tried again after 1 s (as a retry
  would, sooner) and counted. These rows leave out the triggerer's one connection that would then
  watch the N jobs (in the ON rows it is the same connection that submitted).

Neither mode's wall time includes what a deployment pays in both: the scheduler queuing N task
instances and a worker slot starting each one (which then defers with arrays ON, or connects and
submits with arrays OFF). The ON rows start all N triggers at once, so the collection window
closes as soon as every sibling is there (``expected=N``); in a deployment the instances reach the
triggerer as the workers defer them, and ``array_window`` (2 s without a new sibling) decides how
many share a submission.

Every job is held (``--hold``): it is known to slurmctld and never runs. After each row the bench
counts the row's pending elements in slurmctld (``squeue -r``), then cancels them by the ids the
row created.

The figures, and where each is counted:

* **sbatch calls**: slurmctld's own ``REQUEST_SUBMIT_BATCH_JOB`` count (``sdiag``), before and
  after the row;
* **SSH logins at the login node**: ``Accepted publickey`` lines sshd logged during the row (its
  own log, ``-E``). The cluster is private to the bench (below), so every line is the row's own.
  Beside them, the connections sshd dropped past ``MaxStartups`` (at ``LogLevel INFO`` sshd logs
  only an episode's first drop; its ``exited MaxStartups throttling ..., N connections dropped``
  line gives the total) and, in brackets, the tries the workers saw fail to connect;
* **wall time to all N submitted**: from creating the triggers (or starting the workers) to the
  moment every task instance holds its job id. ``sbatch --parsable`` prints an id only after
  slurmctld has created the job record, so this is also the time until slurmctld knows all N;
  the ``slurmctld lists`` column confirms it with one ``squeue -r`` after the row.

Why not "time to all RUNNING": on this 2-core machine it measures something else. The shared
test node advertises 32 CPUs (``HPCINFRA_CPUS``, overcommitted on 2 real cores), so at most 32
one-CPU elements run at once and 1,000 never are RUNNING together; "all have started" would time
slurmd launching 1,000 ``slurmstepd`` on 2 cores shared by four engineers' tests, not the
submission path this issue changes. Time to all known to slurmctld is what is printed instead.

Why a private slurmctld and sshd: the shared test cluster keeps every ended job for a day
(``MinJobAge=86400``) and already holds thousands of records against ``MaxJobCount=10000``
(9,570 when this bench was written), so 1,000 single jobs would push it to its limit and make
every engineer's ``sbatch`` fail; its ``sdiag`` counter and sshd log also count other engineers'
submissions and logins. The bench therefore starts its own slurmctld (no slurmd: held jobs need
no node; same ``MaxArraySize`` of 6 as the shared cluster, sharing its munged) and its own sshd
(OpenSSH defaults, as the shared one: MaxStartups 10:30:100, MaxSessions 10; same host key and
user) on free 127.0.0.1 ports, and stops both by PID at the end. Must run as root (it starts
sshd), on the machine of the shared test cluster (``tests/cluster/up.sh`` must have run).

    .venv/bin/python bench/array_submission.py [--sizes 100,1000] [--slots 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import math
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slurm_poller import DEFAULT_ENV_FILE, REMOTE_ROOT, load_env_file

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.errors import ClusterUnreachableError
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec

MAX_ARRAY_SIZE = 6  # as the shared test cluster (tests/cluster/up.sh)
CONN_ID = "slurm_arraybench"
SHARED_CLUSTER = Path("/tmp/airflow-hpc-cluster")
COMMAND = 'echo "input $SAMPLE"'
OFF_ATTEMPTS = 20
OFF_RETRY_S = 1.0


@dataclass
class Row:
    n: int
    mode: str
    submissions: int
    logins: int
    refused: int
    wall_s: float | None
    listed: int | None
    processes: str = ""
    failed_tries: int = 0


# --- the private cluster -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateCluster:
    """A slurmctld and an sshd of the bench's own, on free 127.0.0.1 ports (module docstring)."""

    def __init__(self, shared: Path) -> None:
        self.shared = shared
        self.dir = Path(tempfile.mkdtemp(prefix="airflow-hpc-arraybench-"))
        self.conf = self.dir / "slurm.conf"
        self.sshd_log = self.dir / "sshd.log"
        self.ssh_port = free_port()
        self.pids: list[int] = []

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        (self.dir / "state").mkdir()
        self.dir.chmod(0o755)
        self.conf.write_text(
            f"ClusterName=arraybench\nSlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)\n"
            f"SlurmUser=root\nSlurmctldPort={free_port()}\nSlurmdPort={free_port()}\n"
            f"AuthType=auth/munge\nAuthInfo=socket={self.shared}/munge/run/munge.socket.2\nCredType=cred/munge\n"
            f"StateSaveLocation={self.dir}/state\nSlurmdSpoolDir={self.dir}/spool\n"
            f"SlurmctldPidFile={self.dir}/slurmctld.pid\nSlurmctldLogFile={self.dir}/slurmctld.log\n"
            "SlurmctldDebug=info\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\nSchedulerType=sched/backfill\n"
            "AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\n"
            f"MaxArraySize={MAX_ARRAY_SIZE}\nMaxJobCount=50000\n"
            "NodeName=arraybench NodeAddr=127.0.0.1 CPUs=32 RealMemory=16000 State=UNKNOWN\n"
            "PartitionName=debug Nodes=arraybench Default=YES MaxTime=INFINITE State=UP\n"
        )
        self.conf.chmod(0o644)
        subprocess.run(["slurmctld", "-f", str(self.conf)], env=self.env, check=True)
        self.pids.append(self._pid(self.dir / "slurmctld.pid"))
        self._wait("slurmctld", lambda: "UP" in self.local("scontrol", "ping"))
        ssh = self.shared / "ssh"
        config = (ssh / "sshd_config").read_text()
        config = re.sub(r"(?m)^Port .*$", f"Port {self.ssh_port}", config)
        config = re.sub(r"(?m)^PidFile .*$", f"PidFile {self.dir}/sshd.pid", config)
        config = re.sub(r"(?m)^SetEnv SLURM_CONF=.*$", f"SetEnv SLURM_CONF={self.conf}", config)
        (self.dir / "sshd_config").write_text(config)
        host_key = (ssh / "ssh_host_ed25519_key.pub").read_text().strip()
        (self.dir / "known_hosts").write_text(f"[127.0.0.1]:{self.ssh_port} {host_key}\n")
        (self.dir / "known_hosts").chmod(0o644)
        subprocess.run(["/usr/sbin/sshd", "-f", str(self.dir / "sshd_config"), "-E", str(self.sshd_log)], check=True)
        self.pids.append(self._pid(self.dir / "sshd.pid"))
        self._wait("sshd", self._listening)

    def _listening(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.ssh_port)) == 0

    @staticmethod
    def _pid(path: Path) -> int:
        for _ in range(100):
            if path.exists() and path.read_text().strip().isdigit():
                return int(path.read_text().strip())
            time.sleep(0.1)
        raise RuntimeError(f"no pid in {path}")

    @staticmethod
    def _wait(what: str, ready: Any) -> None:
        for _ in range(300):
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{what} did not come up")

    def connection(self, shared_conn: str) -> str:
        """The shared cluster's Airflow connection, pointed at the private sshd."""
        conn = json.loads(shared_conn)
        conn["port"] = self.ssh_port
        conn["extra"] = {**conn.get("extra", {}), "known_hosts": str(self.dir / "known_hosts")}
        return json.dumps(conn)

    def local(self, *argv: str) -> str:
        """A Slurm client command on this machine (the login node), against the private slurmctld:
        no SSH, so the row's sshd log counts only the row's own logins."""
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120).stdout

    def submissions(self) -> int:
        match = re.search(r"REQUEST_SUBMIT_BATCH_JOB\s+\(\s*\d+\)\s+count:(\d+)", self.local("sdiag"))
        return int(match.group(1)) if match else 0

    def listed(self, job_name: str) -> int:
        return len(self.local("squeue", "-r", "-h", "-o", "%i", "-n", job_name).split())

    def cancel(self, job_ids: Sequence[str]) -> None:
        for start in range(0, len(job_ids), 200):
            self.local("scancel", *job_ids[start : start + 200])

    def sshd_offset(self) -> int:
        return self.sshd_log.stat().st_size if self.sshd_log.exists() else 0

    def sshd_counts(self, offset: int) -> tuple[int, int]:
        """(logins accepted, connections dropped past MaxStartups) since ``offset``."""
        with self.sshd_log.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        # At LogLevel INFO sshd logs only the first drop of a throttling episode; the episode's
        # "exited MaxStartups throttling after ..., N connections dropped" line has the total.
        episodes = re.findall(r"exited MaxStartups throttling .*?(\d+) connections dropped", text)
        dropped = sum(int(count) for count in episodes)
        unfinished = text.count("beginning MaxStartups throttling") - text.count("exited MaxStartups throttling")
        return len(re.findall(r"Accepted publickey for ", text)), dropped + max(0, unfinished)

    def stop(self) -> None:
        for pid in reversed(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in self.pids:
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the rows -------------------------------------------------------------------------------------


class Bench:
    def __init__(self, cluster: PrivateCluster, target: SshTarget, login: str, slots: int) -> None:
        self.cluster = cluster
        self.target = target
        self.slots = slots
        self.run_id = secrets.token_hex(3)
        self.log_dir = f"{REMOTE_ROOT}/arrays-{self.run_id}"  # under the login user's home
        self.home_dir = Path(pwd.getpwnam(login).pw_dir) / self.log_dir

    def name(self, mode: str, n: int) -> str:
        return f"arraybench-{self.run_id}-{mode}-{n}"

    def measured(self, mode: str, n: int, before: tuple[int, int], wall: float | None, name: str) -> Row:
        submissions_before, offset = before
        submissions = self.cluster.submissions() - submissions_before
        logins, refused = self.cluster.sshd_counts(offset)
        listed = self.cluster.listed(name)
        return Row(n, mode, submissions, logins, refused, wall, listed)

    def start(self) -> tuple[int, int]:
        return self.cluster.submissions(), self.cluster.sshd_offset()

    async def minimum(self, n: int) -> Row:
        name = self.name("min", n)
        sizes = [min(MAX_ARRAY_SIZE, n - start) for start in range(0, n, MAX_ARRAY_SIZE)]
        output = f'"$HOME"/{self.log_dir}/min-%A_%a.log'
        script = f'mkdir -p -- "$HOME"/{self.log_dir}\n' + "".join(
            f"sbatch --parsable --hold --job-name={shlex.quote(name)} --output={output} --array=0-{size - 1} "
            "--wrap true || exit 1\n"
            for size in sizes
        )
        before = self.start()
        started = time.perf_counter()
        transport = SshTransport(self.target)
        try:
            result = await transport.run(script, timeout_s=600)
        finally:
            await transport.close()
        wall = time.perf_counter() - started
        if result.exit_status != 0:
            raise RuntimeError(f"minimum: {result.exit_status} {result.error_text!r}")
        row = self.measured("measured floor: plain sbatch --array, 1 exec", n, before, wall, name)
        row.processes = "1 (1)"
        self.cluster.cancel([line.split(";")[0] for line in result.text.split()])
        return row

    async def arrays_on(self, n: int) -> Row:
        from airflow_hpc_provider.triggers.slurm_array import SlurmArrayElementTrigger
        from airflow_hpc_provider.watching.arrays import ElementRequest, env_items
        from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup, request_to_dict

        name = self.name("on", n)
        spec = JobSpec(command="", job_name=name, extra_directives=("--hold",))
        group = ClusterArrayGroup(conn_id=CONN_ID, head=slurm.render_script(spec), job_name=name, log_dir=self.log_dir)
        run_id = f"{self.run_id}-on-{n}"
        triggers = []
        for map_index in range(n):
            request = ElementRequest(
                group=group,
                key=JobKey.for_task_instance("arraybench", "mapped", run_id, map_index, 1),
                command=COMMAND,
                map_index=map_index,
                env=env_items({"SAMPLE": f"sample_{map_index:04d}"}),
                siblings=f"arraybench/{run_id}/mapped",
                expected=n,
            )
            # A long poll interval: the row ends once every element is submitted.
            triggers.append(
                SlurmArrayElementTrigger(conn_id=CONN_ID, element=request_to_dict(request), poll_interval=60)
            )

        async def drive(trigger: SlurmArrayElementTrigger) -> Any:
            async for event in trigger.run():
                return event.payload
            return None

        before = self.start()
        started = time.perf_counter()
        running = [asyncio.create_task(drive(trigger)) for trigger in triggers]
        try:
            while not all(trigger.job_id for trigger in triggers):
                for task, trigger in zip(running, triggers, strict=True):
                    if task.done() and not trigger.job_id:
                        raise RuntimeError(f"arrays ON: a trigger ended unsubmitted: {task.result()}")
                await asyncio.sleep(0.02)
            wall = time.perf_counter() - started
        finally:
            for task in running:  # as a triggerer stops: the tasks are cancelled
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        row = self.measured("arrays ON: N element triggers, 1 event loop", n, before, wall, name)
        row.processes = f"1 triggerer ({row.logins})"
        self.cluster.cancel(sorted({trigger.job_id.partition("_")[0] for trigger in triggers if trigger.job_id}))
        return row

    async def arrays_off(self, n: int) -> Row:
        from airflow_hpc_provider.hooks.slurm import submit_job

        name = self.name("off", n)
        spec = JobSpec(command=COMMAND, job_name=name, extra_directives=("--hold",))
        script = slurm.render_script(spec)
        run_id = f"{self.run_id}-off-{n}"
        gate = asyncio.Semaphore(self.slots)
        job_ids: list[str] = []
        failed_tries = 0

        async def task_instance(map_index: int) -> None:
            nonlocal failed_tries
            key = JobKey.for_task_instance("arraybench", "mapped", run_id, map_index, 1)
            async with gate:
                for _ in range(OFF_ATTEMPTS):
                    transport = SshTransport(self.target)  # a worker process: a connection of its own
                    try:
                        outcome = await submit_job(
                            transport, spec, script, key=key, log_dir=self.log_dir, env={"SAMPLE": str(map_index)}
                        )
                    except ClusterUnreachableError:
                        failed_tries += 1
                        await asyncio.sleep(OFF_RETRY_S)
                        continue
                    finally:
                        await transport.close()
                    if outcome.job_id is None:
                        raise RuntimeError(f"arrays OFF: no job id: {outcome}")
                    job_ids.append(outcome.job_id)
                    return
                raise RuntimeError(f"arrays OFF: map_index {map_index} refused {OFF_ATTEMPTS} times")

        before = self.start()
        started = time.perf_counter()
        try:
            await asyncio.gather(*(task_instance(i) for i in range(n)))
            wall = time.perf_counter() - started
            row = self.measured(f"arrays OFF: 1 worker per instance, {self.slots} slots", n, before, wall, name)
        finally:
            self.cluster.cancel(job_ids)
        row.processes = f"{n} task instances (1 each)"
        row.failed_tries = failed_tries
        return row

    def clean(self) -> None:
        shutil.rmtree(self.home_dir, ignore_errors=True)


# --- output ---------------------------------------------------------------------------------------

HEADERS = [
    "N",
    "mode",
    "sbatch calls (sdiag)",
    "SSH logins at the login node (sshd log)",
    "Airflow processes that connect (connections each)",
    "sshd drops past MaxStartups (tries that failed to connect)",
    "s to all N submitted (= known to slurmctld)",
    "elements slurmctld lists",
]


def print_table(rows: Sequence[Row]) -> None:
    print("| " + " | ".join(HEADERS) + " |")
    print("|" + "|".join("---" for _ in HEADERS) + "|")
    for n in sorted({row.n for row in rows}):
        floor = math.ceil(n / MAX_ARRAY_SIZE)
        print(f"| {n} | the floor: ceil(N/MaxArraySize) arrays, 1 connection | {floor} | 1 | 1 (1) | 0 | n/a | {n} |")
        for row in (row for row in rows if row.n == n):
            wall = "n/a" if row.wall_s is None else f"{row.wall_s:.2f}"
            refused = f"{row.refused} ({row.failed_tries})"
            listed = "?" if row.listed is None else str(row.listed)
            cells = [str(row.n), row.mode, str(row.submissions), str(row.logins), row.processes, refused]
            print("| " + " | ".join([*cells, wall, listed]) + " |")


def print_targets(rows: Sequence[Row]) -> None:
    print()
    for n in sorted({row.n for row in rows}):
        on = next((row for row in rows if row.n == n and row.mode.startswith("arrays ON")), None)
        off = next((row for row in rows if row.n == n and row.mode.startswith("arrays OFF")), None)
        if on is None:
            continue
        limit = math.ceil(n / MAX_ARRAY_SIZE) + 2
        met = on.submissions <= limit and on.logins <= 1
        line = (
            f"N={n}: arrays ON {on.submissions} sbatch calls (target <= ceil({n}/{MAX_ARRAY_SIZE})+2 = {limit}), "
            f"{on.logins} SSH login(s) (target <= 1 per Airflow process): " + ("met" if met else "NOT met")
        )
        if off is not None and on.wall_s and off.wall_s:
            line += (
                f"; arrays OFF {off.submissions} sbatch calls and {off.logins} logins, "
                f"{off.wall_s / on.wall_s:.1f}x the wall time of ON"
            )
        print(line)


def versions() -> str:
    sshd = subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True).stderr.strip().splitlines()
    sbatch = subprocess.run(["sbatch", "--version"], capture_output=True, text=True).stdout.strip()
    return f"Python {sys.version.split()[0]}, {sbatch}, {sshd[0] if sshd else 'sshd ?'}, {os.cpu_count()} CPUs"


# --- main ---------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace, cluster: PrivateCluster) -> list[Row]:
    from airflow.sdk import BaseHook

    # The triggers' INFO lines (several per element) would drown the figures; warnings still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("airflow_hpc_provider").setLevel(logging.WARNING)
    await asyncio.to_thread(importlib.import_module, "asyncssh")  # imported before any row is timed
    target = SshTarget.from_connection(await BaseHook.aget_connection(CONN_ID))
    bench = Bench(cluster, target, str(target.username), args.slots)
    rows: list[Row] = []
    try:
        for n in [int(size) for size in args.sizes.split(",")]:
            for mode in args.modes.split(","):
                row = await {"min": bench.minimum, "on": bench.arrays_on, "off": bench.arrays_off}[mode](n)
                rows.append(row)
                print(f"  done: N={n} {row.mode}: {row.wall_s or 0:.1f}s", file=sys.stderr, flush=True)
    finally:
        bench.clean()
    return rows


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every bench on a private cluster takes: where the shared cluster's files are."""
    parser.add_argument("--shared-cluster", default=str(SHARED_CLUSTER), help="the shared test cluster's directory")
    parser.add_argument("--env-file", default=DEFAULT_ENV_FILE, help="where AIRFLOW_CONN_SLURM_LOCAL is defined")


def shared_connection(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The shared cluster's connection (the private one copies its user and keys), or the error
    that says what is missing. Root only: the bench starts its own sshd."""
    if os.geteuid() != 0:
        parser.error("run as root: the bench starts its own sshd (see the module docstring)")
    load_env_file(args.env_file)
    shared_conn = os.environ.get("AIRFLOW_CONN_SLURM_LOCAL")
    if not shared_conn:
        parser.error(f"AIRFLOW_CONN_SLURM_LOCAL is neither set nor in {args.env_file}: run tests/cluster/up.sh")
    return shared_conn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100,1000", help="mapped task instances per run (default 100,1000)")
    parser.add_argument("--slots", type=int, default=16, help="worker slots of the arrays-OFF rows (default 16)")
    parser.add_argument("--modes", default="min,on,off", help="rows per N, of min,on,off (default all three)")
    add_cluster_arguments(parser)
    args = parser.parse_args(argv)
    shared_conn = shared_connection(parser, args)
    cluster = PrivateCluster(Path(args.shared_cluster))
    try:
        cluster.start()
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = cluster.connection(shared_conn)
        started = time.perf_counter()
        rows = asyncio.run(main_async(args, cluster))
        took = time.perf_counter() - started
    finally:
        cluster.stop()
    print(
        f"\nHeld jobs (they never run); MaxArraySize {MAX_ARRAY_SIZE}; a private slurmctld and sshd on this machine "
        f"(see the docstring); arrays OFF with {args.slots} worker slots. {versions()}. Whole run {took:.0f} s.\n"
    )
    print_table(rows)
    print_targets(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
