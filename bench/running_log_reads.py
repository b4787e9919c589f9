"""Benchmark: what one poll's log reads of N RUNNING jobs cost the login node, before and after.

Prints figures, asserts nothing. For every N in ``--sizes``, on the login node (over the provider's
own SSH transport, one connection for the whole run):

1. makes N log files under ``~/airflow-hpc-bench/reads-<run>-n<N>/``, each with ``--lines`` lines,
   as N running jobs would have written them, and resumes every one from its (empty) cursor once;
2. then ``--polls`` times: one exec appends one new line to every log (a running job printing now
   and then; not measured), and one exec runs the poll script's log reads of all N jobs exactly as
   the shared poller builds them (``LogRead`` from the last chunk's end, whole lines, the commit of
   the previous chunk carried with ``Record.ALWAYS``), and checks that every job got its one line;
3. does step 2 with both readers in turn on the same files: ``per-job`` (main's shell function
   ``_log``, one call per job, as every poll ran before this reader) and ``batch`` (the one-process
   reader the poll script now uses), plus ``floor``: the same exec with an empty script.

Login-node CPU is measured ON the login node by the script itself, from ``/proc``: the user+system
time of the shell and every child it waited for (``/proc/$$/stat`` fields 14-17), plus that of the
sshd session process that serves the channel (``/proc/$PPID/stat``, when it is sshd and readable).
Wall time is the client's, from sending the script to the exit status.

    .venv/bin/python bench/running_log_reads.py --sizes 100,500,1000 [--polls 5] [--lines 20]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slurm_poller import REMOTE_ROOT, run_on_cluster

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.dialects.remote_shell import LogRead, Record, parse_framed

# Issue 16's targets, login-node CPU and wall time per poll with one new line per running job.
TARGETS = {500: ("<= 0.3 s CPU", 0.3, None), 1000: ("<= 0.6 s CPU, < 2 s wall", 0.6, 2.0)}
MAX_CHUNK = 1 << 20

# Around every script: the login node's own accounting of this exec, in clock ticks (all builtins:
# the measurement starts no process). The shell's own and its waited-for children's user+system
# time; the sshd session process's (the script's parent) user+system time from before to after.
BEFORE = r"""
_sb=-
if [ -r /proc/$PPID/stat ]; then read -r _sb < /proc/$PPID/stat; fi
"""
AFTER = r"""
read -r _ms < /proc/$$/stat
_se=-
if [ -r /proc/$PPID/stat ]; then read -r _se < /proc/$PPID/stat; fi
set -- $_ms
shift 13
_cpu=$(( $1 + $2 + $3 + $4 ))
_sshd=-
case $_sb$_se in *'(sshd)'*'(sshd)'*)
  set -- $_se; shift 13; _sshd=$(( $1 + $2 ))
  set -- $_sb; shift 13; _sshd=$(( _sshd - $1 - $2 ));;
esac
printf 'BENCH %s %s\n' "$_cpu" "$_sshd"
"""


def per_job_reads(token: str, reads: Sequence[LogRead]) -> str:
    """main's poll text: the shell reader, one ``_log`` call per job."""
    return f"_t={token}\n{remote_shell.LOG_READER}" + "".join(read.call() for read in reads)


def batch_reads(token: str, reads: Sequence[LogRead]) -> str:
    return remote_shell.poll_script(token, "", reads)


READERS = {"per-job": per_job_reads, "batch": batch_reads}


@dataclass
class Row:
    n: int
    reader: str
    cpu_s: list[float] = field(default_factory=list)
    sshd_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    script_kib: float = 0.0


class Login:
    """One SSH connection for the whole run (the poller's, too, is one)."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.transport: object | None = None
        self.tick = os.sysconf("SC_CLK_TCK")  # the login node is this machine; ticks are the kernel's

    async def open(self) -> None:
        from airflow.sdk import BaseHook

        from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport

        target = SshTarget.from_connection(await BaseHook.aget_connection(self.conn_id))
        self.transport = SshTransport(target)
        await self.run(":\n")  # connected before anything is measured

    async def run(self, script: str) -> tuple[bytes, float]:
        from airflow_hpc_provider.hooks.ssh import SshTransport

        assert isinstance(self.transport, SshTransport)
        started = time.perf_counter()
        result = await self.transport.run(script, timeout_s=600)
        wall = time.perf_counter() - started
        if result.exit_status != 0:
            raise RuntimeError(f"exit {result.exit_status}: {result.error_text[-500:]}")
        return result.stdout, wall

    async def measured(self, script: str) -> tuple[bytes, float, float, float | None]:
        stdout, wall = await self.run(BEFORE + script + AFTER)
        match = re.search(rb"^BENCH (\d+) (-?\d+|-)$", stdout, re.M)
        assert match, stdout[-300:]
        sshd = None if match.group(2) == b"-" else int(match.group(2)) / self.tick
        return stdout, wall, int(match.group(1)) / self.tick, sshd

    async def close(self) -> None:
        from airflow_hpc_provider.hooks.ssh import SshTransport

        if isinstance(self.transport, SshTransport):
            await self.transport.close()


def setup_script(directory: str, n: int, lines: int) -> str:
    return (
        f'd="$HOME"/{shlex.quote(directory)}\nrm -rf -- "$d" && mkdir -p -- "$d" || exit 1\n'
        f'awk -v d="$d" -v n={n} -v l={lines} \'BEGIN {{ for (i = 0; i < n; i++) {{ f = d "/" i ".log"; '
        'for (j = 0; j < l; j++) printf "job %d line %d of its output, é\\n", i, j > f; close(f) } }\'\n'
    )


def append_script(directory: str, n: int, poll: int) -> str:
    return (
        f'd="$HOME"/{shlex.quote(directory)}\n'
        f'awk -v d="$d" -v n={n} -v p={poll} \'BEGIN {{ for (i = 0; i < n; i++) {{ f = d "/" i ".log"; '
        'printf "job %d new line at poll %d\\n", i, p >> f; close(f) } }\'\n'
    )


async def run_reader(login: Login, reader: str, n: int, args: argparse.Namespace, run_id: str) -> Row:
    directory = f"{REMOTE_ROOT}/reads-{run_id}-n{n}-{reader}"
    await login.run(setup_script(directory, n, args.lines))
    build = READERS[reader]
    offsets: dict[str, int | None] = {str(i): None for i in range(n)}
    committed: dict[str, int] = {str(i): 0 for i in range(n)}
    row = Row(n, reader)

    def reads() -> list[LogRead]:
        out = []
        for job_id, offset in offsets.items():
            carry = offset is not None and offset > committed[job_id]
            out.append(
                LogRead(
                    job_id=job_id,
                    log_path=f"{directory}/{job_id}.log",
                    cursor_path=f"{directory}/{job_id}.cursor",
                    offset=offset,
                    max_bytes=MAX_CHUNK,
                    committed=offset if carry and offset is not None else committed[job_id],
                    record=Record.ALWAYS if carry else Record.WITH_DATA,
                )
            )
        return out

    for poll in range(args.polls + 1):
        if poll:
            await login.run(append_script(directory, n, poll))
        token = remote_shell.random_token()
        current = reads()
        script = build(token, current)
        stdout, wall, cpu, sshd = await login.measured(script)
        framed = parse_framed(stdout, token)
        for read in current:
            chunk = framed.chunks[read.job_id]
            expected = args.lines if poll == 0 else 1
            if chunk.data.count(b"\n") != expected:
                raise RuntimeError(f"{reader}: job {read.job_id} got {chunk.data!r} at poll {poll}")
            if read.offset is not None:
                committed[read.job_id] = read.committed
            offsets[read.job_id] = chunk.end
        if poll:  # poll 0 resumes every job from its cursor: start-up, not the steady state
            row.cpu_s.append(cpu)
            row.wall_s.append(wall)
            if sshd is not None:
                row.sshd_s.append(sshd)
            row.script_kib = len(script.encode()) / 1024
    await login.run(f'rm -rf -- "$HOME"/{shlex.quote(directory)}\n')
    return row


async def floor_row(login: Login, n: int, polls: int) -> Row:
    row = Row(n, "floor (empty script)")
    for _ in range(polls):
        _, wall, cpu, sshd = await login.measured(":\n")
        row.cpu_s.append(cpu)
        row.wall_s.append(wall)
        if sshd is not None:
            row.sshd_s.append(sshd)
    return row


def mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f}" if values else "n/a"


def print_table(rows: Sequence[Row]) -> None:
    header = ["N", "reader", "login CPU s/poll (script tree)", "+ sshd session s/poll", "wall s/poll", "script KiB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        cells = [str(row.n), row.reader, mean(row.cpu_s), mean(row.sshd_s), mean(row.wall_s), f"{row.script_kib:.0f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    for n, (label, cpu_target, wall_target) in TARGETS.items():
        batch = next((r for r in rows if r.n == n and r.reader == "batch"), None)
        if batch is None:
            continue
        cpu = statistics.fmean(batch.cpu_s) + (statistics.fmean(batch.sshd_s) if batch.sshd_s else 0.0)
        wall = statistics.fmean(batch.wall_s)
        met = cpu <= cpu_target and (wall_target is None or wall < wall_target)
        print(
            f"target at N={n} ({label}): batch {cpu:.3f} s CPU incl. sshd, {wall:.3f} s wall: "
            + ("met" if met else "NOT met")
        )


async def main_async(args: argparse.Namespace) -> int:
    login = Login(args.conn_id)
    await login.open()
    run_id = secrets.token_hex(3)
    rows: list[Row] = []
    try:
        for n in [int(size) for size in args.sizes.split(",")]:
            rows.append(await floor_row(login, n, args.polls))
            for reader in READERS:
                rows.append(await run_reader(login, reader, n, args, run_id))
                print(f"  done: N={n} {reader}", file=sys.stderr)
    finally:
        await login.close()
    print(f"\n{args.polls} polls per row after a first resumed read; one new line per job per poll; 1 connection.\n")
    print_table(rows)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100,500,1000", help="comma-separated N (default 100,500,1000)")
    parser.add_argument("--polls", type=int, default=5, help="steady polls measured per row (default 5)")
    parser.add_argument("--lines", type=int, default=20, help="lines each log has before the first poll")
    return run_on_cluster(parser, argv, main_async)


if __name__ == "__main__":
    raise SystemExit(main())
