"""Benchmark: N deferred AWS Batch jobs watched by N real ``BatchJobTrigger`` runs in ONE event loop.

Prints figures, asserts nothing. The parent process runs moto in server mode (``ThreadedMotoServer``
on 127.0.0.1) with the test suite's held-jobs hook, so jobs stay RUNNING, and FilterLogEvents fails
for a stream that does not exist, as on AWS. It submits N jobs and starts a child process (the
"triggerer") that runs N ``BatchJobTrigger(...).run()`` tasks in one ``asyncio.run`` loop, with a
0.1 s sleeper measuring loop lag. The child wraps ``BatchPoller.poll_once`` (pass-through) to count
DescribeJobs and FilterLogEvents calls and the process CPU per poll.

Cases, for every N in ``--sizes`` and every fraction in ``--missing``: every job has a CloudWatch
stream with one line, except that fraction, whose streams do not exist yet (a container that has not
written its first line). ``--backlog L`` adds a case where each of ``--backlog-jobs`` jobs already has
L lines waiting when the triggers start (a restarted triggerer taking over), which measures how long
delivering a backlog holds the event loop.

    PYTHONPATH=. .venv/bin/python bench/batch_poller.py --sizes 100,500,1000 [--missing 0,0.01]
        [--interval 5] [--polls 4] [--warmup-polls 12] [--backlog 13000 --backlog-jobs 10]
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
    from airflow_hpc_provider.triggers.batch import BatchJobTrigger
    from airflow_hpc_provider.watching.batch import BatchPoller
    from airflow_hpc_provider.watching.batch_logs import MemoryPositionStore

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
    lag = {"startup": 0.0, "finding": 0.0, "steady": 0.0}
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
    phase[0] = "finding"
    warmup = params["warmup"]
    while len(samples) < first_full + 1 + warmup:
        await asyncio.sleep(0.05)
    phase[0] = "steady"
    while len(samples) < first_full + 1 + warmup + params["polls"]:
        await asyncio.sleep(0.05)
    finding = samples[first_full : first_full + 1 + warmup]  # the start-up poll and the warm-up polls
    steady = samples[first_full + 1 + warmup : first_full + 1 + warmup + params["polls"]]
    rss1 = _rss_kib()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    probe.cancel()
    first_steady = first_full + warmup
    period_cpu = (steady[-1]["cpu"] - samples[first_steady]["cpu"]) / len(steady)
    return {
        "n": n,
        "missing": params["missing"],
        "describe_per_poll": sum(s["describe"] for s in steady) / len(steady),
        "logs_per_poll": sum(s["logs"] for s in steady) / len(steady),
        "logs_max_while_finding": max(s["logs"] for s in finding),
        "logs_max_steady": max(s["logs"] for s in steady),
        "cpu_ms_per_poll": period_cpu * 1000,
        "cpu_ms_in_poll": sum(s["cpu_in_poll"] for s in steady) / len(steady) * 1000,
        "startup_s": startup_s,
        "startup_lag_ms": lag["startup"] * 1000,
        "finding_lag_ms": lag["finding"] * 1000,
        "steady_lag_ms": lag["steady"] * 1000,
        "rss_kib_per_job": (rss1 - rss0) / n,
    }


async def _backlog_child(params: dict[str, Any]) -> dict[str, Any]:
    """Triggers start with ``lines`` lines each already in CloudWatch: how long is the loop held?"""
    import gc
    import threading

    from airflow_hpc_provider.triggers.batch import BatchJobTrigger
    from airflow_hpc_provider.watching.batch_logs import MemoryPositionStore

    worst = [0.0]
    delivered = [0]
    # CPython's full (generation 2) collections run in whichever thread allocates: parsing tens of
    # thousands of events triggers them, and one in the loop's thread holds the loop too.
    gc_pauses: list[float] = []
    gc_started = [0.0]
    loop_thread = threading.get_ident()

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if threading.get_ident() != loop_thread or info["generation"] != 2:
            return
        if phase == "start":
            gc_started[0] = time.monotonic()
        else:
            gc_pauses.append(time.monotonic() - gc_started[0])

    gc.callbacks.append(on_gc)

    async def monitor() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            worst[0] = max(worst[0], time.monotonic() - before - 0.01)

    import logging

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            delivered[0] += 1

    probe = asyncio.create_task(monitor())
    await asyncio.sleep(0.2)
    worst[0] = 0.0
    triggers = []
    for job_id in params["job_ids"]:
        trigger = BatchJobTrigger(job_id=job_id, aws_conn_id=CONN_ID, poll_interval=params["interval"])
        trigger.position_store = MemoryPositionStore  # type: ignore[method-assign,assignment]
        logger = logging.getLogger(f"bench.backlog.{job_id}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(logging.FileHandler(os.devnull))  # formatted and written, like a log
        logger.addHandler(Count())
        trigger._log = logger
        triggers.append(trigger)

    async def drive(trigger: BatchJobTrigger) -> None:
        async for _ in trigger.run():
            return

    expected = params["lines"] * len(triggers)
    start = time.monotonic()
    cpu = time.process_time()
    tasks = [asyncio.create_task(drive(t)) for t in triggers]
    while delivered[0] < expected:
        await asyncio.sleep(0.05)
    took, cpu_s = time.monotonic() - start, time.process_time() - cpu
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    probe.cancel()
    gc.callbacks.remove(on_gc)
    return {
        "lines": expected,
        "seconds": took,
        "cpu_s": cpu_s,
        "worst_block_ms": worst[0] * 1000,
        "gc_pauses_in_loop_ms": [round(pause * 1000) for pause in gc_pauses],
    }


def child_main(params_path: str) -> None:
    params = json.loads(Path(params_path).read_text())
    import airflow.sdk  # noqa: F401  (configures Airflow, as in a triggerer)

    child = _backlog_child if params.get("backlog") else _child
    print("RESULT " + json.dumps(asyncio.run(child(params))))


def _run_child(params: dict[str, Any], aws: Any) -> dict[str, Any] | None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(params, handle)
    env = {**os.environ, f"AIRFLOW_CONN_{CONN_ID.upper()}": aws.connection_uri(), "PYTHONPATH": "."}
    done = subprocess.run(
        [sys.executable, __file__, "--child", handle.name], env=env, capture_output=True, text=True, timeout=1800
    )
    os.unlink(handle.name)
    result = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    if result is None:
        print(done.stdout[-2000:], done.stderr[-4000:])
        return None
    parsed: dict[str, Any] = json.loads(result[len("RESULT ") :])
    return parsed


def parent_main(
    sizes: list[int],
    missing: list[float],
    interval: float,
    polls: int,
    warmup: int,
    backlog: int,
    backlog_jobs: int,
) -> None:
    import logging

    from tests.integration.batch.moto_batch import HeldJobs, MotoAws, start_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    held = HeldJobs()
    installing = held.install()
    next(installing)
    server, url = start_server()
    aws = MotoAws(url=url, held=held)
    rows = []
    backlog_row = None
    try:
        batch = aws.client("batch")
        definition = batch.register_job_definition(
            jobDefinitionName="bench",
            type="container",
            containerProperties={"image": "bench:1", "vcpus": 1, "memory": 512},
        )["jobDefinitionArn"]
        for n in sizes:
            for fraction in missing:
                queue = aws.make_queue(f"bench-{n}-{int(fraction * 1000)}-{int(time.time())}", held=True)
                ids = [
                    batch.submit_job(jobName=f"b{i}", jobQueue=queue, jobDefinition=definition)["jobId"]
                    for i in range(n)
                ]
                without = set(ids[:: int(1 / fraction)]) if fraction else set()
                for job_id in ids:
                    if job_id not in without:
                        aws.put_lines(str(HeldJobs.job(job_id).log_stream_name), [(int(time.time() * 1000), "hello")])
                params = {"job_ids": ids, "interval": interval, "polls": polls, "warmup": warmup}
                row = _run_child({**params, "missing": len(without)}, aws)
                if row is not None:
                    rows.append(row)
                for job_id in ids:
                    held.finish(job_id, success=True, exit_code=0)
        if backlog:
            queue = aws.make_queue(f"bench-backlog-{int(time.time())}", held=True)
            ids = [
                batch.submit_job(jobName=f"k{i}", jobQueue=queue, jobDefinition=definition)["jobId"]
                for i in range(backlog_jobs)
            ]
            now = int(time.time() * 1000)
            for job_id in ids:
                stream = str(HeldJobs.job(job_id).log_stream_name)
                for start in range(0, backlog, 5000):
                    lines = [(now + i, f"backlog line {i}") for i in range(start, min(backlog, start + 5000))]
                    aws.put_lines(stream, lines)
            backlog_row = _run_child({"job_ids": ids, "interval": interval, "backlog": True, "lines": backlog}, aws)
            for job_id in ids:
                held.finish(job_id, success=True, exit_code=0)
    finally:
        server.stop()
        installing.close()
    print(f"\nBatchJobTrigger x N in one event loop, {interval:g} s polls, {polls} steady polls, moto server mode")
    print("(streams missing: FilterLogEvents naming them fails, as on AWS; steady polls start after the")
    print(f" {warmup} warm-up polls in which missing streams are found and new jobs claimed, 100 a poll)")
    header = (
        f"{'N':>5} {'missing':>8} {'DescribeJobs/poll':>18} {'FilterLogEvents/poll':>21} {'target':>7} "
        f"{'max while finding':>18} {'CPU ms/poll':>12} {'in poll_once':>13} {'all polled after':>17} "
        f"{'start-up lag ms':>16} {'finding lag ms':>15} {'steady lag ms':>14} {'RSS KiB/job':>12}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['n']:>5} {r['missing']:>8} {r['describe_per_poll']:>18.2f} {r['logs_per_poll']:>21.2f} "
            f"{math.ceil(r['n'] / 100):>7} {r['logs_max_while_finding']:>18} "
            f"{r['cpu_ms_per_poll']:>12.1f} {r['cpu_ms_in_poll']:>13.1f} {r['startup_s']:>16.2f}s "
            f"{r['startup_lag_ms']:>16.0f} {r['finding_lag_ms']:>15.0f} {r['steady_lag_ms']:>14.0f} "
            f"{r['rss_kib_per_job']:>12.1f}"
        )
    if backlog_row is not None:
        print(
            f"\nbacklog (a triggerer taking over): {backlog_jobs} jobs x {backlog} lines waiting = "
            f"{backlog_row['lines']} lines delivered in {backlog_row['seconds']:.1f} s "
            f"({backlog_row['cpu_s']:.1f} s CPU); worst event-loop block {backlog_row['worst_block_ms']:.0f} ms; "
            f"full garbage collections in the loop's thread meanwhile: {backlog_row['gc_pauses_in_loop_ms']} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500,1000")
    parser.add_argument("--missing", default="0,0.01", help="fractions of streams that do not exist yet")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--polls", type=int, default=4)
    parser.add_argument("--warmup-polls", type=int, default=12, help="polls to find the missing streams first")
    parser.add_argument("--backlog", type=int, default=0, help="lines already waiting per job (0: no such case)")
    parser.add_argument("--backlog-jobs", type=int, default=10)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
    else:
        parent_main(
            [int(n) for n in args.sizes.split(",")],
            [float(f) for f in args.missing.split(",")],
            args.interval,
            args.polls,
            args.warmup_polls,
            args.backlog,
            args.backlog_jobs,
        )
