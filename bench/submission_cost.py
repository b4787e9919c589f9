"""Benchmark: what a submission costs, ours over one connection vs raw sbatch over one connection.

Prints figures, asserts nothing. Every row submits ``--jobs`` held jobs (``--hold``: they use no
node) of the same one-line script, ``--concurrency`` at a time, then cancels them:

* ``raw sbatch``: ``sbatch --parsable --hold --output=...`` with the script on stdin, one SSH exec
  per job over one connection (the physical minimum of a submission over SSH);
* ``ours``: the provider's find-or-submit (``hooks.slurm.submit_job``: per-task lock, this task's
  recorded jobs, the submission recorded before its id is printed) over one connection, as a worker
  process now submits; every job is a new task instance;
* ``ours, retry``: the same for a second try of each task instance after its first try's job was
  claimed by a trigger (the find half asks the scheduler about the first try's job);
* ``ours, max_concurrent_jobs``: with the connection's cap set (high enough never to bite): the
  cap is counted over all of the user's live jobs under a per-user lock;
* ``ours, a new connection per submission``: as every task did before, the connection cost alone.

Login-node CPU is measured at the login node: the sshd process that serves the connection reaps
every channel's shell, so its user+system time plus its children's (``/proc/<sshd>/stat`` fields
14-17, read by a channel's shell as ``/proc/$PPID/stat``) before and after a row cover every
process the row started there, sshd's own work included. The last row opens a connection per job,
so only its wall time is shown. slurmctld's CPU is not the login node's and is not included.

    .venv/bin/python bench/submission_cost.py [--jobs 200] [--concurrency 1,4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slurm_poller import REMOTE_ROOT, run_on_cluster

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec

TARGET_PER_S = 30.0
TARGET_CPU_MS = 15.0
COMMAND = "echo hello"
SESSION_CPU = 'read -r _s < /proc/$PPID/stat\nprintf "%s\\n" "$_s"\n'


@dataclass
class Row:
    mode: str
    concurrency: int
    jobs: int
    wall_s: float
    login_cpu_s: float | None

    @property
    def per_s(self) -> float:
        return self.jobs / self.wall_s

    @property
    def cpu_ms(self) -> str:
        return "n/a" if self.login_cpu_s is None else f"{self.login_cpu_s / self.jobs * 1000:.1f}"


class Bench:
    def __init__(self, target: SshTarget, run_id: str) -> None:
        self.target = target
        self.run_id = run_id
        self.log_dir = f"{REMOTE_ROOT}/submit-{run_id}"  # under the login user's home
        self.name = f"bench-submit-{run_id}"
        self.spec = JobSpec(command=COMMAND, job_name=self.name, extra_directives=("--hold",))
        self.script = slurm.render_script(self.spec)
        self.tick = os.sysconf("SC_CLK_TCK")  # the login node is this machine

    async def session_cpu_s(self, transport: SshTransport) -> float | None:
        """The serving sshd's CPU, its reaped children's included (None: not sshd or not readable)."""
        out = (await transport.run(SESSION_CPU)).text
        match = re.match(r"\d+ \((sshd[^)]*)\) \S+ (.*)", out.strip())
        if not match:
            return None
        fields = match.group(2).split()
        return sum(int(value) for value in fields[10:14]) / self.tick  # stat fields 14-17

    async def raw(self, transport: SshTransport, i: int) -> None:
        output = f"$HOME/{self.log_dir}/raw-%j.log"
        command = f"sbatch --parsable --hold --job-name={shlex.quote(self.name)} --output={output}"
        result = await transport.run(f"{command} <<'__BENCH_EOF__'\n{self.script}__BENCH_EOF__\n")
        if result.exit_status != 0 or not result.text.strip().isdigit():
            raise RuntimeError(f"raw sbatch: {result.exit_status} {result.text!r} {result.error_text!r}")

    def key(self, i: int, try_number: int) -> JobKey:
        return JobKey.for_task_instance("bench", f"t{i}", self.run_id, -1, try_number)

    async def ours(self, transport: SshTransport, i: int, *, try_number: int = 1, cap: int | None = None) -> str:
        from airflow_hpc_provider.hooks.slurm import submit_job

        key = self.key(i, try_number)
        outcome = await submit_job(
            transport, self.spec, self.script, key=key, log_dir=self.log_dir, env={}, max_concurrent_jobs=cap
        )
        if outcome.job_id is None or outcome.adopted:
            raise RuntimeError(f"ours: {outcome}")
        return outcome.job_id

    async def row(
        self, mode: str, jobs: int, concurrency: int, submit: Callable[[SshTransport, int], Awaitable[object]]
    ) -> Row:
        transport = SshTransport(self.target)
        try:
            await transport.run(f'mkdir -p -- "$HOME"/{self.log_dir}\n')  # connected before anything is measured
            before = await self.session_cpu_s(transport)
            gate = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with gate:
                    await submit(transport, i)

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(jobs)))
            wall = time.perf_counter() - started
            after = await self.session_cpu_s(transport)
        finally:
            await transport.close()
        cpu = None if before is None or after is None else after - before
        return Row(mode, concurrency, jobs, wall, cpu)

    async def per_task_connection(self, jobs: int, concurrency: int, first: int) -> Row:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                transport = SshTransport(self.target)
                try:
                    await self.ours(transport, first + i)
                finally:
                    await transport.close()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(jobs)))
        return Row("ours, a new connection per submission", concurrency, jobs, time.perf_counter() - started, None)

    async def claim_first_tries(self) -> None:
        """Mark every first try's job as watched by a trigger, so a second try submits anew."""
        transport = SshTransport(self.target)
        try:
            await transport.run(
                f'cd "$HOME"/{self.log_dir} || exit 1\n'
                "for _r in *.jobs; do d=${_r%.jobs}; while read -r _j _; do "
                ': > "$d-$_j.cursor.watched"; done < "$_r"; done\n'
            )
        finally:
            await transport.close()

    async def clean(self) -> None:
        transport = SshTransport(self.target)
        try:
            await transport.run(
                f'scancel -u "$(id -un)" --name={shlex.quote(self.name)} 2>/dev/null\n'
                f'rm -rf -- "$HOME"/{self.log_dir}\n'
            )
        finally:
            await transport.close()


async def rows_at(target: SshTarget, args: argparse.Namespace, concurrency: int) -> list[Row]:
    bench = Bench(target, secrets.token_hex(3))
    jobs = args.jobs

    async def retry(transport: SshTransport, i: int) -> str:
        return await bench.ours(transport, i, try_number=2)

    async def capped(transport: SshTransport, i: int) -> str:
        return await bench.ours(transport, jobs + i, cap=100_000)  # never reached: the count is the cost

    try:
        rows = [
            await bench.row("raw sbatch", jobs, concurrency, bench.raw),
            await bench.row("ours", jobs, concurrency, bench.ours),
        ]
        await bench.claim_first_tries()
        rows.append(await bench.row("ours, retry (find half asks about try 1's job)", jobs, concurrency, retry))
        rows.append(await bench.row("ours, max_concurrent_jobs set", jobs, concurrency, capped))
        rows.append(await bench.per_task_connection(min(jobs, args.per_task_jobs), concurrency, 2 * jobs))
    finally:
        await bench.clean()
    return rows


async def main_async(args: argparse.Namespace) -> int:
    from airflow.sdk import BaseHook

    target = SshTarget.from_connection(await BaseHook.aget_connection(args.conn_id))
    rows: list[Row] = []
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        rows += await rows_at(target, args, concurrency)
        print(f"  done: concurrency {concurrency}", file=sys.stderr)
    print(f"\n{args.jobs} held jobs per row (the last row: {args.per_task_jobs}); one-line script; this machine.\n")
    header = ["mode", "at once", "submissions/s", "login CPU ms/submission (sshd + every process it started)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print(f"| {row.mode} | {row.concurrency} | {row.per_s:.1f} | {row.cpu_ms} |")
    print()
    for concurrency in sorted({row.concurrency for row in rows}):
        ours = next(r for r in rows if r.mode == "ours" and r.concurrency == concurrency)
        raw = next(r for r in rows if r.mode == "raw sbatch" and r.concurrency == concurrency)
        cpu = None if ours.login_cpu_s is None else ours.login_cpu_s / ours.jobs * 1000
        met = ours.per_s >= TARGET_PER_S and cpu is not None and cpu <= TARGET_CPU_MS
        print(
            f"at {concurrency} at once: ours {ours.per_s:.1f}/s ({ours.per_s / raw.per_s:.2f}x raw sbatch's "
            f"{raw.per_s:.1f}/s), {ours.cpu_ms} ms login CPU (raw {raw.cpu_ms}); target >= {TARGET_PER_S:.0f}/s "
            f"and <= {TARGET_CPU_MS:.0f} ms: " + ("met" if met else "NOT met")
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=200, help="held jobs per row (default 200)")
    parser.add_argument("--per-task-jobs", type=int, default=50, help="jobs in the connection-per-task row")
    parser.add_argument("--concurrency", default="1,4", help="submissions at once, comma-separated (default 1,4)")
    return run_on_cluster(parser, argv, main_async)


if __name__ == "__main__":
    raise SystemExit(main())
