"""Benchmark: does heavy job output stall the triggerer's event loop? (and does every line arrive?)

Prints figures, asserts nothing. For each code version in ``--code`` (``new``: this checkout;
``old``: the provider as of ``--old-ref``, extracted with ``git archive``, side by side):

1. submits ``--tasks`` Slurm jobs (one SSH exec) that each print ``--lines`` numbered lines at about
   ``--rate`` lines/s;
2. waits ``--backlog-s`` seconds while nobody watches them: about tasks x rate x backlog lines pile
   up (13,000 with the defaults), as for a triggerer that takes over after a crash;
3. starts a child process that plays the triggerer as Airflow 3.3 runs it: one event loop running
   the ``SlurmJobTrigger`` of every job, its logging configured as the trigger runner's is (JSON
   messages on a Unix socket, ``configure_logging(json_output=True, sending_to_supervisor=True)``),
   and a separate "supervisor" process that reads that socket and writes each message to a file
   with a flush, as the triggerer's supervisor writes task logs;
4. measures in the child, with a 10 ms ticker: the worst event-loop block and how many blocks
   passed 0.1 s and 0.2 s (Airflow's own "blocked" warning threshold), while it catches up on the
   backlog and then while the jobs stream (``--rate`` lines/s each); how long the catch-up took; the
   loop's CPU; and, at the end, whether every line reached the supervisor's file exactly once.

    .venv/bin/python bench/log_delivery.py [--tasks 10] [--lines 3000] [--rate 100] [--backlog-s 13]
        [--code new,old] [--old-ref 036ece9]

The connection comes from ``AIRFLOW_CONN_SLURM_LOCAL`` or ``--env-file`` (written by
``tests/cluster/up.sh``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ENV_FILE = "/tmp/airflow-hpc-cluster/airflow.env"
REMOTE_ROOT = "airflow-hpc-bench"
LINE = re.compile(r"^bench-(\d+) line (\d+) of (\d+)$")

# The "supervisor": reads JSON log messages from the socket (fd argv[2]), writes each to the file
# argv[1] with a flush, as Airflow's supervisor writes a task log (here: one file for all triggers).
SUPERVISOR = r"""
import socket, sys
sock = socket.socket(fileno=int(sys.argv[2]))
out = open(sys.argv[1], "wb")
buffer = b""
while True:
    data = sock.recv(65536)
    if not data:
        break
    buffer += data
    *lines, buffer = buffer.split(b"\n")
    for line in lines:
        out.write(line + b"\n")
        out.flush()
"""


def load_env(path: str) -> None:
    if os.environ.get("AIRFLOW_CONN_SLURM_LOCAL"):
        return
    for line in Path(path).read_text().splitlines():
        name, _, value = line.partition("=")
        if name:
            os.environ[name] = shlex.split(value)[0] if value else ""


def ssh(command: str) -> str:
    cluster = Path(os.environ.get("HPC_CLUSTER_DIR", "/tmp/airflow-hpc-cluster"))
    done = subprocess.run(
        [
            "ssh",
            "-p",
            "2222",
            "-i",
            str(cluster / "ssh/id_ed25519"),
            "-o",
            f"UserKnownHostsFile={cluster / 'ssh/known_hosts'}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "hpcuser@127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def submit(tasks: int, lines: int, rate: int, directory: str) -> list[str]:
    """One exec: ``tasks`` jobs printing ``bench-<i> line <n> of <lines>``, ``rate`` lines/s each."""
    per_tick = max(1, rate // 10)
    body = (
        "#!/bin/sh\n"
        # Every job starts printing when the bench releases them all at once.
        'while [ ! -e "$HOME/' + f"{REMOTE_ROOT}/{directory}" + '/go" ]; do sleep 0.2; done\n'
        f'for n in $(seq 1 {lines}); do echo "bench-$1 line $n of {lines}"; '
        f"if [ $((n % {per_tick})) -eq 0 ]; then sleep 0.1; fi; done\n"
    )
    script = (
        f"mkdir -p {REMOTE_ROOT}/{directory} && cd {REMOTE_ROOT}/{directory} || exit 1\n"
        f"cat > job.sh <<'EOF'\n{body}EOF\n"
        f"for i in $(seq 0 {tasks - 1}); do\n"
        f'  sbatch --parsable -A myacct -c 1 --mem=64M -t 10 -J bench-delivery -o "$PWD/$i.out" job.sh "$i" || exit 1\n'
        "done\n"
    )
    return ssh(script).split()


def cancel(job_ids: list[str], directory: str) -> None:
    ids = " ".join(shlex.quote(j) for j in job_ids)
    ssh(f"scancel {ids} 2>/dev/null; rm -rf {REMOTE_ROOT}/{shlex.quote(directory)}")


def wait_running(job_ids: list[str], timeout_s: float = 300) -> None:
    """Until every job runs (each then waits for the go file before it prints)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = ssh(f"squeue -h -t all -j {','.join(job_ids)} -o %T").split()
        if len(states) == len(job_ids) and all(s == "RUNNING" for s in states):
            return
        time.sleep(0.5)
    raise SystemExit(f"the bench jobs did not all start within {timeout_s:.0f}s")


# --- the child -------------------------------------------------------------------------------------


def child(params: dict[str, Any]) -> dict[str, Any]:
    if params["code_path"]:
        sys.path.insert(0, params["code_path"])
    from airflow.sdk.log import configure_logging, reset_logging

    import airflow_hpc_provider

    assert airflow_hpc_provider.__file__ is not None
    ours, theirs = socket.socketpair()
    log_file = Path(params["log_file"])
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(log_file), str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    stream = os.fdopen(ours.detach(), "wb", buffering=0)
    reset_logging()
    configure_logging(json_output=True, output=stream, sending_to_supervisor=True)
    try:
        if os.environ.get("BENCH_SLOW_CALLBACKS"):  # name the code that holds the loop (asyncio's debug mode)

            async def traced() -> dict[str, Any]:
                loop = asyncio.get_running_loop()
                loop.set_debug(True)
                loop.slow_callback_duration = float(os.environ["BENCH_SLOW_CALLBACKS"])
                return await _watch(params)

            return asyncio.run(traced())
        return asyncio.run(_watch(params))
    finally:
        reset_logging()
        stream.close()  # the supervisor reads to the end, then exits
        supervisor.wait(timeout=120)


async def _watch(params: dict[str, Any]) -> dict[str, Any]:
    from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger

    backlog = params["backlog_lines"]
    phase = {"name": "catch-up"}
    worst = {"catch-up": 0.0, "streaming": 0.0}
    over = Counter[str]()
    delivered = [0]

    # Lines written to the "task log" so far: counted in the supervisor's file as it grows.
    written_file = open(params["log_file"], "rb")  # noqa: SIM115
    marker = f" of {params['lines']}".encode()

    def count_written() -> None:
        delivered[0] += written_file.read().count(marker)

    busiest = {"idle": 0.0, "catch-up": 0.0, "streaming": 0.0}

    async def ticker() -> None:
        while True:
            before, cpu_before = time.monotonic(), time.thread_time()
            await asyncio.sleep(0.01)
            late = time.monotonic() - before - 0.01
            # CPU the loop's thread spent between two ticks: code that ran without yielding. Wall
            # lateness beyond it is the machine not giving the thread a CPU (other processes).
            busy = time.thread_time() - cpu_before
            name = phase["name"]
            worst[name] = max(worst[name], late)
            busiest[name] = max(busiest[name], busy)
            if late > 0.1:
                over[f"{name} > 0.1s"] += 1
            if late > 0.2:
                over[f"{name} > 0.2s"] += 1

    triggers = [
        SlurmJobTrigger(
            conn_id="slurm_local",
            job_id=job_id,
            log_path=f"{REMOTE_ROOT}/{params['directory']}/{index}.out",
            cursor_path=f"{REMOTE_ROOT}/{params['directory']}/{index}.cursor",
            poll_interval=2.0,
        )
        for index, job_id in enumerate(params["job_ids"])
    ]
    # The loop with nothing but the ticker, first: how late a tick is on this machine right now.
    phase["name"] = "idle"
    worst["idle"] = 0.0
    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(5)
    # Let every job print at once, and give them the time to pile up a backlog nobody reads.
    await asyncio.to_thread(ssh, f"touch {REMOTE_ROOT}/{params['directory']}/go")
    await asyncio.sleep(params["backlog_s"])
    phase["name"] = "catch-up"
    cpu = time.process_time()
    started = time.monotonic()

    async def drive(trigger: SlurmJobTrigger) -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        return {}

    runs = [asyncio.create_task(drive(t)) for t in triggers]
    caught_up_s = None
    while not all(run.done() for run in runs):
        await asyncio.sleep(0.1)
        count_written()
        if caught_up_s is None and delivered[0] >= backlog:
            caught_up_s = time.monotonic() - started
            phase["name"] = "streaming"
    payloads = [run.result() for run in runs]
    ticking.cancel()
    return {
        "code": params["code"],
        "worst_block_idle_s": worst["idle"],
        "blocks_idle": {k: v for k, v in over.items() if k.startswith("idle")},
        "busiest_catch_up_s": busiest["catch-up"],
        "busiest_streaming_s": busiest["streaming"],
        "worst_block_catch_up_s": worst["catch-up"],
        "worst_block_streaming_s": worst["streaming"],
        "blocks": {k: v for k, v in over.items() if not k.startswith("idle")},
        "caught_up_s": caught_up_s,
        "wall_s": time.monotonic() - started,
        "cpu_s": time.process_time() - cpu,
        "lines_logged": delivered[0],
        "states": Counter(p.get("status", {}).get("state", p.get("kind")) for p in payloads),
    }


def count_delivered(log_file: Path, tasks: int, lines: int) -> tuple[int, int, int]:
    """(missing, repeated, replay markers) over every job's lines in the supervisor's file."""
    seen: Counter[tuple[int, int]] = Counter()
    markers = 0
    for raw in log_file.read_text(errors="replace").splitlines():
        try:
            event = str(json.loads(raw).get("event", ""))
        except ValueError:
            continue
        if event.startswith("--- replayed"):
            markers += 1
        match = LINE.match(event)
        if match:
            seen[(int(match.group(1)), int(match.group(2)))] += 1
    missing = sum(1 for t in range(tasks) for n in range(1, lines + 1) if not seen[(t, n)])
    repeated = sum(count - 1 for count in seen.values() if count > 1)
    return missing, repeated, markers


def old_code(ref: str) -> str:
    target = Path(tempfile.mkdtemp(prefix="hpc-bench-old-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "airflow_hpc_provider"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return str(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--backlog-s", type=float, default=13.0)
    parser.add_argument("--code", default="new,old")
    parser.add_argument("--old-ref", default="036ece9", help="the provider before delivery confirmation")
    parser.add_argument("--env-file", default=DEFAULT_ENV_FILE)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child)), default=str))
        return
    load_env(args.env_file)
    results = []
    for code in args.code.split(","):
        directory = f"delivery-{code}-{secrets.token_hex(4)}"
        job_ids = submit(args.tasks, args.lines, args.rate, directory)
        try:
            wait_running(job_ids)
            log_file = Path(tempfile.mkstemp(prefix=f"hpc-bench-{code}-", suffix=".log")[1])
            params = {
                "code": code,
                "code_path": old_code(args.old_ref) if code == "old" else "",
                "job_ids": job_ids,
                "directory": directory,
                "log_file": str(log_file),
                "backlog_lines": int(args.tasks * args.rate * args.backlog_s * 0.9),
                "backlog_s": args.backlog_s,
                "lines": args.lines,
            }
            done = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(params)],
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if done.returncode != 0:
                raise SystemExit(
                    f"the {code} child failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
                )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["missing"], result["repeated"], result["replays"] = count_delivered(log_file, args.tasks, args.lines)
            results.append(result)
        finally:
            cancel(job_ids, directory)
    total = args.tasks * args.lines
    print(
        f"\n{args.tasks} Slurm jobs x {args.lines} lines at ~{args.rate} lines/s each; the watch starts after "
        f"{args.backlog_s:.0f}s (about {int(args.tasks * args.rate * args.backlog_s)} lines pending), 2 s polls, "
        "logging through a supervisor socket"
    )
    print(
        "code | worst block catch-up (CPU of it) | worst block streaming (CPU of it) | blocks > 0.1 s / > 0.2 s "
        "| catch-up | loop CPU | lines missing / repeated"
    )
    for r in results:
        blocks = r["blocks"]
        print(
            f"{r['code']:>4} | {r['worst_block_catch_up_s']:.3f} s ({r['busiest_catch_up_s']:.3f} s) | "
            f"{r['worst_block_streaming_s']:.3f} s ({r['busiest_streaming_s']:.3f} s) | "
            f"{sum(v for k, v in blocks.items() if '0.1' in k)} / {sum(v for k, v in blocks.items() if '0.2' in k)} | "
            f"{r['caught_up_s'] or float('nan'):.1f} s | {r['cpu_s']:.1f} s over {r['wall_s']:.0f} s | "
            f"{r['missing']} / {r['repeated']} of {total}; outcomes {r['states']}"
        )
    for r in results:
        print(
            f"minimum ({r['code']} run): the ticker alone, before the triggers started, was at worst "
            f"{r['worst_block_idle_s']:.3f} s late (blocks {r['blocks_idle'] or 'none'}); every line once"
        )


if __name__ == "__main__":
    main()
