"""Benchmark: N deferred SlurmSubmitOperator triggers vs N SSHRemoteJobTrigger (apache-airflow-providers-ssh).

Prints figures and ratios measured in the same run; asserts nothing. For every N in ``--sizes``,
each side runs in a fresh child process (the "triggerer": one ``asyncio.run`` loop, N trigger tasks
started at t=0 as Airflow's TriggerRunner drives them), on the same cluster through the same sshd
(the test cluster's login node on 127.0.0.1:2222, at OpenSSH's default MaxStartups/MaxSessions):

* **ours**: N Slurm jobs ``sleep S; echo ended <epoch>`` submitted with sbatch in one SSH exec, each
  watched by a ``SlurmJobTrigger`` (what a deferred ``SlurmSubmitOperator`` waits on);
* **peer**: the same command started N times on the login node with the SSH provider's own
  ``build_posix_wrapper_command`` (what ``SSHRemoteJobOperator`` does), each watched by an
  ``SSHRemoteJobTrigger``.

Measured in the child, with pass-through counting wrappers around ``asyncssh.connect`` and
``SSHClientConnection.create_session`` (every exec channel, both sides): SSH connections opened and
refused, remote commands per minute, the child's CPU seconds (``time.process_time``, all threads),
triggers that ended in error (a task that would fail), and for each trigger that fired: the time
from the job's last line (``ended <epoch>``, read back from its output file) to its event.

The cluster advertises 32 CPUs: at N > 32 Slurm runs 32 jobs at a time and the rest wait in the
queue (the peer's processes all run at once on the login node). The window is the same for both;
"ended in window" says how many finished. ``--overhead`` adds: a trivial job through a real Airflow
deployment (tests/deployment/stack.py; task start to task success) against raw ``sbatch --wait``.

    .venv/bin/python bench/peers_slurm.py --sizes 50,200,500 [--job-s 20] [--window-s 90] [--poll 5] [--overhead]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.slurm_poller import Cluster, load_env_file  # noqa: E402

CONN_ID = "slurm_local"
SSH_PEER_CONN = "AIRFLOW_CONN_PEER_SSH"
REMOTE_ROOT = "airflow-hpc-peers"
ENV_FILE = "/tmp/airflow-hpc-cluster/airflow.env"
SSHD_LOG = "/tmp/airflow-hpc-cluster/ssh/sshd.log"


@dataclass
class SideResult:
    side: str
    n: int
    connections: int = 0
    refused: int = 0
    commands: int = 0
    window_s: float = 0.0
    cpu_s: float = 0.0
    fired: int = 0
    errors: int = 0
    fired_at: dict[str, float] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    sshd_dropped: int = 0

    @property
    def commands_per_min(self) -> float:
        return self.commands / self.window_s * 60 if self.window_s else 0.0


# --- the child ("triggerer") ----------------------------------------------------------------------


def _install_counters(counts: dict[str, int]) -> None:
    import asyncssh

    original_connect = asyncssh.connect
    original_session = asyncssh.SSHClientConnection.create_session

    async def connect(*args: Any, **kwargs: Any) -> Any:
        counts["attempts"] += 1
        try:
            conn = await original_connect(*args, **kwargs)
        except Exception:
            counts["refused"] += 1
            raise
        counts["connections"] += 1
        return conn

    async def create_session(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["commands"] += 1
        return await original_session(self, *args, **kwargs)

    asyncssh.connect = connect
    asyncssh.SSHClientConnection.create_session = create_session  # type: ignore[method-assign]


def _make_triggers(params: dict[str, Any]) -> list[tuple[str, Any]]:
    if params["side"] == "ours":
        from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger

        return [
            (
                job["job_id"],
                SlurmJobTrigger(
                    conn_id=CONN_ID,
                    job_id=job["job_id"],
                    log_path=job["log_path"],
                    cursor_path=job["cursor_path"],
                    poll_interval=params["poll"],
                ),
            )
            for job in params["jobs"]
        ]
    from airflow.providers.ssh.triggers.ssh_remote_job import SSHRemoteJobTrigger

    return [
        (
            job["job_id"],
            SSHRemoteJobTrigger(
                ssh_conn_id="peer_ssh",
                remote_host=None,
                job_id=job["job_id"],
                job_dir=job["job_dir"],
                log_file=job["log_path"],
                exit_code_file=job["exit_code_file"],
                remote_os="posix",
                poll_interval=int(params["poll"]),
            ),
        )
        for job in params["jobs"]
    ]


async def _child(params: dict[str, Any]) -> dict[str, Any]:
    counts = {"attempts": 0, "refused": 0, "connections": 0, "commands": 0}
    _install_counters(counts)
    triggers = _make_triggers(params)
    fired: dict[str, float] = {}
    errors: list[str] = []

    async def drive(job_id: str, trigger: Any) -> None:
        async for event in trigger.run():
            fired[job_id] = time.time()
            payload = event.payload
            if payload.get("kind") == "error" or payload.get("status") == "error":
                errors.append(job_id)
            return

    cpu0, t0 = time.process_time(), time.monotonic()
    tasks = [asyncio.create_task(drive(job_id, trigger)) for job_id, trigger in triggers]
    done, pending = await asyncio.wait(tasks, timeout=params["window_s"])
    window = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    counts_at_window = dict(counts)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return {
        "counts": counts_at_window,
        "window_s": window,
        "cpu_s": cpu,
        "fired": fired,
        "errors": errors,
        "crashed": sum(1 for task in done if task.exception() is not None),
    }


def child_main(params_path: str) -> None:
    import logging

    logging.disable(logging.INFO)  # both sides alike: the figures are the watching, not log I/O
    params = json.loads(Path(params_path).read_text())
    result = asyncio.run(_child(params))
    Path(params["out"]).write_text(json.dumps(result))


# --- the parent -----------------------------------------------------------------------------------


def job_command(job_s: int) -> str:
    return f'sleep {job_s}; echo "ended $(date +%s.%N)"'


def submit_ours(cluster: Cluster, run: str, n: int, job_s: int) -> list[dict[str, str]]:
    directory = f"{REMOTE_ROOT}/{run}/slurm"
    script = (
        f'd="$HOME"/{shlex.quote(directory)}; mkdir -p -- "$d" || exit 1\n'
        f"for i in $(seq 1 {n}); do\n"
        f'  sbatch --parsable --job-name=airflow-hpc-peers-{run} --output="$d/%j.out" '
        f"--wrap={shlex.quote(job_command(job_s))} || exit 1\n"
        "done\n"
    )
    status, out, err = cluster.run(script)
    if status != 0:
        raise SystemExit(f"sbatch failed ({status}): {err or out}")
    ids = [line.split(";")[0] for line in out.split() if line.strip()]
    return [{"job_id": i, "log_path": f"{directory}/{i}.out", "cursor_path": f"{directory}/{i}.cursor"} for i in ids]


def start_peer(cluster: Cluster, run: str, n: int, job_s: int) -> list[dict[str, str]]:
    from airflow.providers.ssh.utils.remote_job import RemoteJobPaths, build_posix_wrapper_command, generate_job_id

    status, home, _ = cluster.run('printf %s "$HOME"')
    base = f"{home}/{REMOTE_ROOT}/{run}/ssh"
    jobs, wrappers = [], []
    for i in range(n):
        job_id = generate_job_id("peers_bench", f"job_{i}", run, 1)
        paths = RemoteJobPaths(job_id=job_id, remote_os="posix", base_dir=base)
        wrappers.append(f"bash -c {shlex.quote(build_posix_wrapper_command(job_command(job_s), paths))}\n")
        jobs.append(
            {
                "job_id": job_id,
                "job_dir": paths.job_dir,
                "log_path": paths.log_file,
                "exit_code_file": paths.exit_code_file,
                "pid_file": paths.pid_file,
            }
        )
    for start in range(0, n, 50):
        status, out, err = cluster.run("".join(wrappers[start : start + 50]))
        if status != 0:
            raise SystemExit(f"starting peer jobs failed ({status}): {err or out}")
    return jobs


def ended_at(cluster: Cluster, paths: list[str]) -> dict[str, float]:
    """The epoch each job printed as its last line, by output path (home-relative or absolute)."""
    result: dict[str, float] = {}
    for start in range(0, len(paths), 200):
        chunk = paths[start : start + 200]
        script = "".join(
            f'f={shlex.quote(p)}; case $f in /*) ;; *) f="$HOME/$f";; esac; '
            f'printf "%s|%s\\n" {shlex.quote(p)} "$(tail -n 1 -- "$f" 2>/dev/null)"\n'
            for p in chunk
        )
        _, out, _ = cluster.run(script)
        for line in out.splitlines():
            path, _, last = line.partition("|")
            if last.startswith("ended "):
                result[path] = float(last.split()[1])
    return result


def sshd_dropped(offset: int) -> int:
    try:
        with open(SSHD_LOG, "rb") as log:
            log.seek(offset)
            return sum(1 for line in log if b"past MaxStartups" in line)
    except OSError:
        return 0


def run_side(args: argparse.Namespace, cluster: Cluster, side: str, n: int, workdir: Path) -> SideResult:
    run = f"{side}-n{n}-{secrets.token_hex(3)}"
    jobs = submit_ours(cluster, run, n, args.job_s) if side == "ours" else start_peer(cluster, run, n, args.job_s)
    params_path, out_path = workdir / f"{run}.json", workdir / f"{run}.out.json"
    params_path.write_text(
        json.dumps({"side": side, "jobs": jobs, "poll": args.poll, "window_s": args.window_s, "out": str(out_path)})
    )
    log_offset = os.path.getsize(SSHD_LOG) if os.path.exists(SSHD_LOG) else 0
    try:
        with open(workdir / f"{run}.log", "wb") as child_log:  # the triggers' own log lines
            subprocess.run(
                [sys.executable, __file__, "--child", str(params_path)],
                check=True,
                timeout=args.window_s + 300,
                stdout=child_log,
                stderr=subprocess.STDOUT,
            )
        data = json.loads(out_path.read_text())
        ends = ended_at(cluster, [job["log_path"] for job in jobs])
    finally:
        if side == "ours":
            cluster.run("scancel -- " + " ".join(shlex.quote(job["job_id"]) for job in jobs) + " 2>/dev/null; exit 0")
        else:
            from airflow.providers.ssh.utils.remote_job import build_posix_kill_command

            for start in range(0, len(jobs), 50):
                kills = "".join(
                    f"{build_posix_kill_command(job['pid_file'])} 2>/dev/null\n" for job in jobs[start : start + 50]
                )
                cluster.run(kills + "exit 0")
        time.sleep(1)
        cluster.run(f'rm -rf -- "$HOME"/{shlex.quote(f"{REMOTE_ROOT}/{run}")}; exit 0')
    by_path = {job["job_id"]: job["log_path"] for job in jobs}
    result = SideResult(side=side, n=n)
    result.connections = data["counts"]["connections"]
    result.refused = data["counts"]["refused"]
    result.commands = data["counts"]["commands"]
    result.window_s = data["window_s"]
    result.cpu_s = data["cpu_s"]
    result.fired = len(data["fired"])
    result.errors = len(data["errors"]) + data["crashed"]
    result.sshd_dropped = sshd_dropped(log_offset)
    for job_id, when in data["fired"].items():
        end = ends.get(by_path[job_id])
        if end is not None and job_id not in data["errors"]:
            result.latencies_s.append(when - end)
    return result


def _q(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f}"


def print_tables(results: list[SideResult]) -> None:
    header = (
        f"{'N':>4} {'side':<5} {'SSH conns':>9} {'refused':>7} {'cmds/min':>9} {'CPU s':>7} {'fired':>6} "
        f"{'failed':>6} {'end->event s p50/p95/max':>25}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        lat = f"{_q(r.latencies_s, 0.5)}/{_q(r.latencies_s, 0.95)}/{_q(r.latencies_s, 1.0)}"
        print(
            f"{r.n:>4} {r.side:<5} {r.connections:>9} {r.refused:>7} {r.commands_per_min:>9.0f} {r.cpu_s:>7.2f} "
            f"{r.fired:>6} {r.errors:>6} {lat:>25}"
        )
    print("\nratios, peer / ours (same run):")
    sizes = sorted({r.n for r in results})
    for n in sizes:
        ours = next((r for r in results if r.n == n and r.side == "ours"), None)
        peer = next((r for r in results if r.n == n and r.side == "peer"), None)
        if ours is None or peer is None:
            continue

        def ratio(a: float, b: float) -> str:
            return f"{a / b:.0f}x" if b else "-"

        lat_o = statistics.median(ours.latencies_s) if ours.latencies_s else float("nan")
        lat_p = statistics.median(peer.latencies_s) if peer.latencies_s else float("nan")
        print(
            f"  N={n}: SSH connections {ratio(peer.connections, ours.connections)}, "
            f"remote commands/min {ratio(peer.commands_per_min, ours.commands_per_min)}, "
            f"CPU {peer.cpu_s / ours.cpu_s if ours.cpu_s else float('nan'):.1f}x; "
            f"refused connections {peer.refused} vs {ours.refused}; failed tasks {peer.errors} vs {ours.errors}; "
            f"median job end -> event {lat_p:.1f}s vs {lat_o:.1f}s"
        )


def overhead(cluster: Cluster, repeats: int) -> None:
    """A trivial job through a real Airflow stack (task start -> success) vs raw ``sbatch --wait``."""
    from tests.deployment.stack import AirflowStack
    from tests.integration import cluster as test_cluster

    raw = []
    for _ in range(repeats):
        started = time.monotonic()
        test_cluster.ssh("sbatch --wait --quiet --output=/dev/null --wrap true")
        raw.append(time.monotonic() - started)
    env = test_cluster.bring_up()
    with tempfile.TemporaryDirectory(prefix="peers-overhead-") as home:
        stack = AirflowStack(Path(home), REPO / "tests/deployment/dags", extra_env=env)
        try:
            stack.start()
            through_airflow = []
            for _ in range(repeats):
                run_id = stack.trigger("dep_trivial")
                stack.wait_for_run_end("dep_trivial", run_id, 180)
                ti = stack.task_instance("dep_trivial", run_id, "job")
                through_airflow.append(_seconds(ti["end_date"]) - _seconds(ti["start_date"]))
        finally:
            stack.stop()
    print(
        f"\noverhead, trivial job ('true'), {repeats} runs each:\n"
        f"  raw sbatch --wait over ssh (incl. ssh connect): median {statistics.median(raw):.1f}s {sorted(raw)}\n"
        f"  SlurmSubmitOperator, task start -> task success (poll 1s, deferred): median "
        f"{statistics.median(through_airflow):.1f}s {sorted(round(x, 1) for x in through_airflow)}\n"
        f"  ratio {statistics.median(through_airflow) / statistics.median(raw):.1f}x"
    )


def _seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--sizes", default="50,200,500")
    parser.add_argument("--job-s", type=int, default=20)
    parser.add_argument("--window-s", type=float, default=90.0)
    parser.add_argument("--poll", type=float, default=5.0)
    parser.add_argument("--sides", default="ours,peer")
    parser.add_argument("--overhead", action="store_true")
    parser.add_argument("--overhead-repeats", type=int, default=3)
    args = parser.parse_args()
    if not os.environ.get("AIRFLOW_CONN_SLURM_LOCAL"):
        load_env_file(ENV_FILE)
    slurm = json.loads(os.environ["AIRFLOW_CONN_SLURM_LOCAL"])
    # The peer's connection: same host, user, key and known_hosts, in the extras SSHHookAsync reads.
    os.environ.setdefault(
        SSH_PEER_CONN,
        json.dumps(
            {
                "conn_type": "ssh",
                "host": slurm["host"],
                "port": slurm["port"],
                "login": slurm["login"],
                "extra": {"key_file": slurm["extra"]["key_file"], "known_hosts": slurm["extra"]["known_hosts"]},
            }
        ),
    )
    if args.child:
        child_main(args.child)
        return 0
    cluster = Cluster(CONN_ID)
    results = []
    with tempfile.TemporaryDirectory(prefix="peers-slurm-") as workdir:
        for n in [int(x) for x in args.sizes.split(",")]:
            for side in args.sides.split(","):
                result = run_side(args, cluster, side, n, Path(workdir))
                summary = {k: v for k, v in asdict(result).items() if k not in ("fired_at", "latencies_s")}
                print(f"N={n} {side}: {json.dumps(summary)}", flush=True)
                results.append(result)
    print(
        f"\none event loop per side, {args.poll:.0f}s polls, jobs 'sleep {args.job_s}; echo ended', window "
        f"{args.window_s:.0f}s, login node sshd at OpenSSH defaults (MaxStartups 10:30:100, MaxSessions 10)\n"
    )
    print_tables(results)
    if args.overhead:
        overhead(cluster, args.overhead_repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
