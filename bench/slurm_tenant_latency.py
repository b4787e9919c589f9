"""Tenant launch latency against a plain sbatch job's time to RUNNING, on the same cluster.

A tenant starts in an allocation that already runs: its launch is one SSH round trip over a warm
connection (squeue lookup, files written, ``srun --overlap`` + ``tmux new-session``). A plain job
pays the scheduler: submit, then wait for RUNNING. Both are timed from the same warm asyncssh
connection; the job's wait is measured by asking ``squeue`` every 50 ms. Prints figures, asserts
nothing. The connection comes from ``AIRFLOW_CONN_SLURM_LOCAL`` (read from
``/tmp/airflow-hpc-cluster/airflow.env`` when it is not set).

    .venv/bin/python bench/slurm_tenant_latency.py [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import time
import uuid
from datetime import timedelta
from pathlib import Path

from airflow_hpc_provider.dialects.slurm_allocation import AllocationSpec
from airflow_hpc_provider.dialects.slurm_tenant import TenantSpec
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR, SlurmHook
from airflow_hpc_provider.hooks.slurm_tenant import (
    book_allocation,
    find_allocation,
    launch_tenant,
    release_allocation,
)
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec, Resources

ENV_FILE = Path("/tmp/airflow-hpc-cluster/airflow.env")


def load_env() -> None:
    if "AIRFLOW_CONN_SLURM_LOCAL" in os.environ or not ENV_FILE.exists():
        return
    for line in ENV_FILE.read_text().splitlines():
        name, _, value = line.partition("=")
        os.environ.setdefault(name, shlex.split(value)[0] if value else "")


def figures(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return (
        f"{label:<38} n={len(samples):<3} median {statistics.median(samples) * 1000:7.0f} ms   "
        f"p90 {p90 * 1000:7.0f} ms   min {ordered[0] * 1000:6.0f} ms   max {ordered[-1] * 1000:6.0f} ms"
    )


async def main(runs: int) -> None:
    link = SshTransport(SlurmHook("slurm_local").get_target())
    reservation = f"bench-tenants-{uuid.uuid4().hex[:6]}"
    spec = AllocationSpec(
        reservation,
        JobSpec(
            command="",
            job_name=reservation,
            resources=Resources(cpus=1, memory_mb=256, time_limit=timedelta(minutes=10)),
        ),
    )
    plain_jobs: list[str] = []
    try:
        await link.run("true\n")  # warm: the connection is open before anything is timed
        await book_allocation(link, spec, log_dir=DEFAULT_LOG_DIR)
        while not (await find_allocation(link, reservation)).running:
            await asyncio.sleep(0.2)

        launches: list[float] = []
        run_id = uuid.uuid4().hex
        for index in range(runs):
            key = JobKey.for_task_instance("bench", f"tenant{index}", run_id, -1, 1)
            started = time.perf_counter()
            outcome = await launch_tenant(
                link, reservation, TenantSpec(command="true"), key=key, log_dir=DEFAULT_LOG_DIR
            )
            launches.append(time.perf_counter() - started)
            assert outcome.word == "STARTED", outcome

        to_running: list[float] = []
        for index in range(runs):
            started = time.perf_counter()
            result = await link.run(
                f"sbatch --parsable -J {shlex.quote(f'bench-plain-{index}')} -c 1 --mem=64M -t 2 -o /dev/null "
                "--wrap 'sleep 5'\n"
            )
            job_id = result.text.strip().split(";")[0]
            plain_jobs.append(job_id)
            while True:
                state = (await link.run(f"squeue -h -j {shlex.quote(job_id)} -o %T\n")).text.strip()
                if state not in ("PENDING", "CONFIGURING", ""):
                    break
                await asyncio.sleep(0.05)
            to_running.append(time.perf_counter() - started)
            await link.run(f"scancel {shlex.quote(job_id)}\n")

        round_trips: list[float] = []
        for _ in range(runs):
            started = time.perf_counter()
            await link.run("true\n")
            round_trips.append(time.perf_counter() - started)

        print(f"cluster: {link.target.where}; allocation {reservation}; {runs} runs each")
        print(figures("empty SSH round trip (warm)", round_trips))
        print(figures("tenant launch (one round trip)", launches))
        print(figures("plain sbatch: submit -> RUNNING", to_running))
        print(
            f"tenant launch is {statistics.median(to_running) / statistics.median(launches):.1f}x faster "
            "than a plain job's time to RUNNING (medians)"
        )
    finally:
        await release_allocation(link, reservation)
        if plain_jobs:
            await link.run("scancel " + " ".join(shlex.quote(job) for job in plain_jobs) + " 2>/dev/null; true\n")
        await link.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    load_env()
    asyncio.run(main(parser.parse_args().runs))
