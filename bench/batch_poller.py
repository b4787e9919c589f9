"""Benchmark: N deferred AWS Batch jobs watched by N real ``BatchJobTrigger`` runs in ONE event loop.

Prints figures, asserts nothing. The parent process runs moto in server mode (``ThreadedMotoServer``
on 127.0.0.1) with the test suite's held-jobs hook, so jobs stay RUNNING; it submits N jobs and
starts a child process (the "triggerer") that runs N ``BatchJobTrigger(...).run()`` tasks in one
``asyncio.run`` loop, with a 0.1 s sleeper measuring loop lag. The child wraps
``BatchPoller.poll_once`` (pass-through) to count DescribeJobs and FilterLogEvents calls and the
process CPU per poll. Every job has a CloudWatch stream with one line, so log reads are real too.

    PYTHONPATH=. .venv/bin/python bench/batch_poller.py --sizes 100,500,1000 [--interval 5] [--polls 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONN_ID = "aws_bench"


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def _child(params: dict[str, Any]) -> dict[str, Any]:
    from airflow_hpc_provider.batch_logs import MemoryPositionStore
    from airflow_hpc_provider.batch_poller import BatchPoller
    from airflow_hpc_provider.triggers.batch import BatchJobTrigger

    samples: list[dict[str, float]] = []
    original = BatchPoller.poll_once

    async def poll_once(poller: BatchPoller) -> None:  # pass-through with counters
        calls, logs, cpu = poller.describe_calls, poller.log_calls, time.process_time()
        await original(poller)
        samples.append(
            {
                "jobs": len(poller._tracks),
                "describe": poller.describe_calls - calls,
                "logs": poller.log_calls - logs,
                "cpu_in_poll": time.process_time() - cpu,
                "cpu": time.process_time(),
                "t": time.monotonic(),
            }
        )

    BatchPoller.poll_once = poll_once  # type: ignore[method-assign]
    lag = {"startup": 0.0, "steady": 0.0}
    phase = ["startup"]

    async def monitor() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            lag[phase[0]] = max(lag[phase[0]], time.monotonic() - before - 0.1)

    probe = asyncio.create_task(monitor())
    await asyncio.sleep(0.5)
    rss0 = _rss_kib()
    n = len(params["job_ids"])
    triggers = []
    for job_id in params["job_ids"]:
        trigger = BatchJobTrigger(job_id=job_id, aws_conn_id=CONN_ID, poll_interval=params["interval"])
        trigger.position_store = MemoryPositionStore  # type: ignore[method-assign,assignment]
        triggers.append(trigger)

    async def drive(trigger: BatchJobTrigger) -> None:
        async for _ in trigger.run():
            return

    start = time.monotonic()
    tasks = [asyncio.create_task(drive(t)) for t in triggers]
    while not any(s["jobs"] == n for s in samples):
        await asyncio.sleep(0.05)
    first_full = next(i for i, s in enumerate(samples) if s["jobs"] == n)
    startup_s = samples[first_full]["t"] - start
    phase[0] = "steady"
    while len(samples) < first_full + 1 + params["polls"]:
        await asyncio.sleep(0.05)
    steady = samples[first_full + 1 : first_full + 1 + params["polls"]]
    rss1 = _rss_kib()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    probe.cancel()
    period_cpu = (steady[-1]["cpu"] - samples[first_full]["cpu"]) / len(steady)
    return {
        "n": n,
        "describe_per_poll": sum(s["describe"] for s in steady) / len(steady),
        "logs_per_poll": sum(s["logs"] for s in steady) / len(steady),
        "cpu_ms_per_poll": period_cpu * 1000,
        "cpu_ms_in_poll": sum(s["cpu_in_poll"] for s in steady) / len(steady) * 1000,
        "startup_s": startup_s,
        "startup_lag_ms": lag["startup"] * 1000,
        "steady_lag_ms": lag["steady"] * 1000,
        "rss_kib_per_job": (rss1 - rss0) / n,
    }


def child_main(params_path: str) -> None:
    params = json.loads(Path(params_path).read_text())
    import airflow.sdk  # noqa: F401  (configures Airflow, as in a triggerer)

    print("RESULT " + json.dumps(asyncio.run(_child(params))))


def parent_main(sizes: list[int], interval: float, polls: int) -> None:
    import logging

    from tests.integration.batch.moto_batch import HeldJobs, MotoAws, start_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    held = HeldJobs()
    installing = held.install()
    next(installing)
    server, url = start_server()
    aws = MotoAws(url=url, held=held)
    rows = []
    try:
        batch = aws.client("batch")
        definition = batch.register_job_definition(
            jobDefinitionName="bench",
            type="container",
            containerProperties={"image": "bench:1", "vcpus": 1, "memory": 512},
        )["jobDefinitionArn"]
        for n in sizes:
            queue = aws.make_queue(f"bench-{n}-{int(time.time())}", held=True)
            ids = [
                batch.submit_job(jobName=f"b{i}", jobQueue=queue, jobDefinition=definition)["jobId"] for i in range(n)
            ]
            for job_id in ids:
                aws.put_lines(str(HeldJobs.job(job_id).log_stream_name), [(int(time.time() * 1000), "hello")])
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
                json.dump({"job_ids": ids, "interval": interval, "polls": polls}, handle)
            env = {**os.environ, f"AIRFLOW_CONN_{CONN_ID.upper()}": aws.connection_uri(), "PYTHONPATH": "."}
            done = subprocess.run(
                [sys.executable, __file__, "--child", handle.name], env=env, capture_output=True, text=True, timeout=900
            )
            os.unlink(handle.name)
            result = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
            if result is None:
                print(done.stdout[-2000:], done.stderr[-4000:])
                continue
            rows.append(json.loads(result[len("RESULT ") :]))
            for job_id in ids:
                held.finish(job_id, success=True, exit_code=0)
    finally:
        server.stop()
        installing.close()
    print(f"\nBatchJobTrigger x N in one event loop, {interval:g} s polls, {polls} steady polls, moto server mode")
    header = (
        f"{'N':>5} {'DescribeJobs/poll':>18} {'target':>7} {'FilterLogEvents/poll':>21} {'CPU ms/poll':>12} "
        f"{'in poll_once':>13} {'all polled after':>17} {'start-up lag ms':>16} {'steady lag ms':>14} "
        f"{'RSS KiB/job':>12}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['n']:>5} {r['describe_per_poll']:>18.2f} {math.ceil(r['n'] / 100):>7} {r['logs_per_poll']:>21.2f} "
            f"{r['cpu_ms_per_poll']:>12.1f} {r['cpu_ms_in_poll']:>13.1f} {r['startup_s']:>16.2f}s "
            f"{r['startup_lag_ms']:>16.0f} {r['steady_lag_ms']:>14.0f} {r['rss_kib_per_job']:>12.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500,1000")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--polls", type=int, default=4)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
    else:
        parent_main([int(n) for n in args.sizes.split(",")], args.interval, args.polls)
