"""Benchmark: how long after a trivial job ends does its task learn it, vs raw ``sbatch --wait``.

Prints figures, asserts nothing. ``--runs`` times, alternating, one job running ``true``:

* ``raw sbatch --wait``: one SSH exec of ``sbatch --wait --parsable --wrap true``; its wall time
  from sending the command to the exit status (Slurm's own wait: the physical minimum);
* ``ours``: the provider's submission (``hooks.slurm.submit_job``) and then the job's
  ``SlurmJobTrigger`` at the default poll interval (``[hpc] default_poll_interval``, 10 s unless
  set) until its event: what a deferred task waits. The trigger shares the process's poller, kept
  warm by one held job watched throughout, as a triggerer's poller is.

Both submit over a connection already open. The worker's resumption after the event (Airflow's
scheduling of ``execute_complete``) is not included: it is the same for every deferrable operator.

    .venv/bin/python bench/trivial_job_latency.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slurm_poller import REMOTE_ROOT, run_on_cluster

from airflow_hpc_provider.config import default_poll_interval_s
from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec

TARGET_OVERHEAD_S = 2.0


async def first_event(trigger: Any) -> dict[str, Any]:
    events = trigger.run()
    try:
        async with asyncio.timeout(600):
            event = await anext(events)
    finally:
        await events.aclose()
    return dict(event.payload)


async def main_async(args: argparse.Namespace) -> int:
    from airflow.sdk import BaseHook

    from airflow_hpc_provider.hooks.slurm import submit_job
    from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger

    target = SshTarget.from_connection(await BaseHook.aget_connection(args.conn_id))
    run_id = secrets.token_hex(3)
    log_dir = f"{REMOTE_ROOT}/latency-{run_id}"
    name = f"bench-latency-{run_id}"
    interval = default_poll_interval_s()
    transport = SshTransport(target)
    raw_s: list[float] = []
    ours_s: list[float] = []

    def trigger_for(key: JobKey, job_id: str) -> Any:
        return SlurmJobTrigger(
            conn_id=args.conn_id,
            job_id=job_id,
            log_path=slurm.log_path(log_dir, key, job_id),
            cursor_path=slurm.cursor_path(log_dir, key, job_id),
            poll_interval=interval,
        )

    async def submit(key: JobKey, spec: JobSpec) -> str:
        outcome = await submit_job(transport, spec, slurm.render_script(spec), key=key, log_dir=log_dir, env={})
        assert outcome.job_id is not None and not outcome.adopted, outcome
        return outcome.job_id

    keeper: asyncio.Task[Any] | None = None
    try:
        await transport.run(f'mkdir -p -- "$HOME"/{shlex.quote(log_dir)}\n')
        held_key = JobKey.for_task_instance("bench", "held", run_id, -1, 1)
        held = await submit(held_key, JobSpec(command="true", job_name=name, extra_directives=("--hold",)))
        keeper = asyncio.create_task(first_event(trigger_for(held_key, held)))
        await asyncio.sleep(interval + 2)  # the shared poller is open and in its steady rhythm
        for run in range(args.runs):
            started = time.perf_counter()
            result = await transport.run(
                f"sbatch --wait --parsable --job-name={shlex.quote(name)} --output=/dev/null --wrap true\n",
                timeout_s=600,
            )
            raw_s.append(time.perf_counter() - started)
            if result.exit_status != 0:
                raise RuntimeError(f"raw sbatch --wait: {result.exit_status} {result.error_text}")

            key = JobKey.for_task_instance("bench", f"t{run}", run_id, -1, 1)
            started = time.perf_counter()
            job_id = await submit(key, JobSpec(command="true", job_name=name))
            payload = await first_event(trigger_for(key, job_id))
            ours_s.append(time.perf_counter() - started)
            if payload.get("status", {}).get("state") != "COMPLETED":
                raise RuntimeError(f"ours: {payload}")
            print(f"  run {run + 1}: raw {raw_s[-1]:.2f} s, ours {ours_s[-1]:.2f} s", file=sys.stderr)
    finally:
        if keeper is not None:
            keeper.cancel()
        await transport.run(
            f'scancel -u "$(id -un)" --name={shlex.quote(name)} 2>/dev/null\nrm -rf -- "$HOME"/{shlex.quote(log_dir)}\n'
        )
        await transport.close()
    raw, ours = statistics.median(raw_s), statistics.median(ours_s)
    print(f"\n{args.runs} trivial jobs each (`true`), poll interval {interval:g} s (the default), this machine.\n")
    print("| path | median s | min s | max s |")
    print("|---|---|---|---|")
    for label, values in (("raw sbatch --wait", raw_s), ("ours: submit + trigger event", ours_s)):
        print(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    overhead = ours - raw
    met = overhead <= TARGET_OVERHEAD_S
    print(
        f"\noverhead (median ours - median raw): {overhead:+.2f} s; target <= +{TARGET_OVERHEAD_S:.0f} s: "
        + ("met" if met else "NOT met")
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="jobs per path (default 5)")
    return run_on_cluster(parser, argv, main_async)


if __name__ == "__main__":
    raise SystemExit(main())
