"""Benchmark: N deferred Batch tasks' triggers vs the amazon provider's BatchJobTrigger (deferrable BatchOperator).

Prints figures and ratios measured in the same run; asserts nothing. The parent process runs moto in
server mode on 127.0.0.1 (werkzeug, as ``ThreadedMotoServer`` does, with a pass-through WSGI wrapper that
records every request: its time, its action and, for DescribeJobs, how many job ids it asked about). It
holds jobs RUNNING with the test suite's hook (``tests/integration/batch/moto_batch.py``: a test-side
patch of moto's own job finishing, applied in this process, which runs the server), submits
``max(--sizes)`` jobs once, gives each one CloudWatch line, and for every N runs two children, one per side.
Each child plays the triggerer: ONE ``asyncio.run`` loop in which N trigger ``run()`` generators each run
in their own task, all started at t=0 (a triggerer restart), on the first N jobs, for ``--window-s``:

* **ours**: ``airflow_hpc_provider.triggers.batch.BatchJobTrigger`` (what a deferred
  ``BatchRevisionOperator`` waits on), ``poll_interval=--interval``;
* **peer**: ``airflow.providers.amazon.aws.triggers.batch.BatchJobTrigger`` (what the amazon provider's
  deferrable ``BatchOperator`` waits on), ``waiter_delay=--interval``, ``waiter_max_attempts`` big.

Both reach moto through the same Airflow ``aws`` connection (``AIRFLOW_CONN_AWS_BENCH``, ``endpoint_url``
in its extra). The peer needs aiobotocore, which pins botocore below the project's: both children run
with the same overlay (``--peer-site``: aiobotocore 3.10.0, botocore/boto3 1.43.117, installed there with
pip ``--target`` on first use; the project's venv is not touched), so both sides use the same botocore.
INFO logging is off in both children (``logging.disable(INFO)``), as in ``peers_slurm.py``.

Measured: DescribeJobs (and all AWS) requests per minute, counted at the server for the child's window;
the child's CPU seconds (``time.process_time``, all threads) over the window, and per poll in the last
third of it (steady); the loop lag (a 0.1 s sleeper: worst lateness, and seconds late in total); RSS per
watched job (VmRSS at the end of the window minus just before the triggers were made, over N); when every
job had been asked about at least once; triggers that fired (none should: the jobs stay RUNNING).

    PYTHONPATH=. .venv/bin/python bench/peers_batch.py --sizes 100,500,1000 --interval 5 --window-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
CONN_ID = "aws_bench"
PEER_SITE = "/tmp/airflow-hpc-peers-batch/site"
PEER_PINS = ["aiobotocore==3.10.0", "aioitertools==0.13.0", "botocore==1.43.117", "boto3==1.43.117"]
PEER_MAX_ATTEMPTS = 1_000_000


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- the child ("triggerer") ----------------------------------------------------------------------


def _import_triggers(side: str) -> None:
    """Import the side's trigger module before the window: a triggerer imports it once, not per job."""
    if side == "ours":
        import airflow_hpc_provider.triggers.batch  # noqa: F401
    else:
        import airflow.providers.amazon.aws.triggers.batch  # noqa: F401


def _make_triggers(side: str, job_ids: list[str], interval: float) -> list[Any]:
    if side == "ours":
        from airflow_hpc_provider.triggers.batch import BatchJobTrigger

        return [BatchJobTrigger(job_id=job_id, aws_conn_id=CONN_ID, poll_interval=interval) for job_id in job_ids]
    from airflow.providers.amazon.aws.triggers.batch import BatchJobTrigger as PeerBatchJobTrigger

    return [
        PeerBatchJobTrigger(
            job_id=job_id,
            aws_conn_id=CONN_ID,
            waiter_delay=int(interval),
            waiter_max_attempts=PEER_MAX_ATTEMPTS,
        )
        for job_id in job_ids
    ]


async def _child(params: dict[str, Any]) -> dict[str, Any]:
    interval: float = params["interval"]
    window_s: float = params["window_s"]
    job_ids: list[str] = params["job_ids"]
    ticks: list[tuple[float, float, float]] = []  # (wall clock, lateness s, process CPU s)

    async def probe() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            ticks.append((time.time(), time.monotonic() - before - 0.1, time.process_time()))

    _import_triggers(params["side"])
    probing = asyncio.create_task(probe())
    await asyncio.sleep(1.0)
    rss0 = _rss_kib()
    cpu0, t0, m0 = time.process_time(), time.time(), time.monotonic()
    fired: list[str] = []
    errors: list[str] = []

    async def drive(job_id: str, trigger: Any) -> None:
        async for event in trigger.run():
            fired.append(job_id)
            payload = event.payload
            if payload.get("status") == "error" or payload.get("kind") == "error":
                errors.append(job_id)
            return

    triggers = _make_triggers(params["side"], job_ids, interval)
    tasks = [asyncio.create_task(drive(job_id, t)) for job_id, t in zip(job_ids, triggers, strict=True)]
    done, pending = await asyncio.wait(tasks, timeout=max(0.0, window_s - (time.monotonic() - m0)))
    t1, cpu1, rss1 = time.time(), time.process_time(), _rss_kib()
    for task in pending:
        task.cancel()
    cancel_started = time.monotonic()
    await asyncio.wait(pending, timeout=60)
    cancel_s = time.monotonic() - cancel_started
    probing.cancel()
    steady_from = t0 + (t1 - t0) * 2 / 3
    window_ticks = [tick for tick in ticks if t0 <= tick[0] <= t1]
    steady_ticks = [tick for tick in window_ticks if tick[0] >= steady_from]
    steady_cpu = steady_ticks[-1][2] - steady_ticks[0][2] if len(steady_ticks) > 1 else 0.0
    steady_span = steady_ticks[-1][0] - steady_ticks[0][0] if len(steady_ticks) > 1 else 0.0
    return {
        "t0": t0,
        "t1": t1,
        "steady_from": steady_ticks[0][0] if steady_ticks else t1,
        "steady_to": steady_ticks[-1][0] if steady_ticks else t1,
        "cpu_s": cpu1 - cpu0,
        "steady_cpu_per_poll_s": steady_cpu / steady_span * interval if steady_span else 0.0,
        "worst_lag_s": max((tick[1] for tick in window_ticks), default=0.0),
        "steady_worst_lag_s": max((tick[1] for tick in steady_ticks), default=0.0),
        "late_total_s": sum(max(0.0, tick[1]) for tick in window_ticks),
        "rss_kib_per_job": (rss1 - rss0) / len(job_ids),
        "rss_mib_end": rss1 / 1024,
        "fired": len(fired),
        "errors": len(errors) + sum(1 for task in done if not task.cancelled() and task.exception() is not None),
        "cancel_s": cancel_s,
        "still_running_after_cancel": sum(1 for task in pending if not task.done()),
    }


def child_main(params_path: str) -> None:
    import logging

    params = json.loads(Path(params_path).read_text())
    import airflow.sdk  # noqa: F401  (configures Airflow and its logging, as in a triggerer)

    logging.disable(logging.INFO)  # both sides alike: the figures are the watching, not log I/O
    result = asyncio.run(_child(params))
    Path(params["out"]).write_text(json.dumps(result))


# --- moto in server mode, with a request recorder -------------------------------------------------


@dataclass(frozen=True)
class AwsRequest:
    at: float
    action: str
    job_ids: tuple[str, ...] = ()


class RequestRecorder:
    """Pass-through WSGI wrapper: records every request the moto server answers."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.requests: list[AwsRequest] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        path = environ.get("PATH_INFO", "")
        job_ids: tuple[str, ...] = ()
        if target:
            action = target.rsplit(".", 1)[-1]
        elif path.rstrip("/") == "/v1/describejobs":
            action = "DescribeJobs"
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
            with contextlib.suppress(ValueError):
                job_ids = tuple(json.loads(body or b"{}").get("jobs", []))
        else:
            action = f"{environ.get('REQUEST_METHOD', '')} {path}"
        self.requests.append(AwsRequest(time.time(), action, job_ids))
        return self.app(environ, start_response)

    def between(self, start: float, end: float) -> list[AwsRequest]:
        return [r for r in list(self.requests) if start <= r.at <= end]


@dataclass
class MotoServer:
    url: str
    recorder: RequestRecorder
    server: Any
    thread: threading.Thread

    @classmethod
    def start(cls) -> MotoServer:
        import requests
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        from tests.integration.batch.moto_batch import free_port

        recorder = RequestRecorder(DomainDispatcherApplication(create_backend_app))
        server = make_server("127.0.0.1", free_port(), recorder, threaded=True, request_handler=MotoRequestHandler)
        thread = threading.Thread(target=server.serve_forever, name="moto-server", daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_port}"
        requests.post(f"{url}/moto-api/config", json={"batch": {"use_docker": False}}, timeout=10).raise_for_status()
        return cls(url, recorder, server, thread)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)


# --- the parent -----------------------------------------------------------------------------------


@dataclass
class SideResult:
    side: str
    n: int
    window_s: float = 0.0
    describe_calls: int = 0
    describe_ids: int = 0
    all_calls: int = 0
    steady_describe_per_poll: float = 0.0
    all_asked_after_s: float | None = None
    cpu_s: float = 0.0
    steady_cpu_per_poll_s: float = 0.0
    worst_lag_s: float = 0.0
    steady_worst_lag_s: float = 0.0
    late_total_s: float = 0.0
    rss_kib_per_job: float = 0.0
    rss_mib_end: float = 0.0
    fired: int = 0
    errors: int = 0
    cancel_s: float = 0.0
    still_running_after_cancel: int = 0
    load_before: float = 0.0
    other_calls: dict[str, int] = field(default_factory=dict)

    @property
    def describe_per_min(self) -> float:
        return self.describe_calls / self.window_s * 60 if self.window_s else 0.0

    @property
    def all_per_min(self) -> float:
        return self.all_calls / self.window_s * 60 if self.window_s else 0.0


def ensure_peer_site(site: str) -> None:
    if (Path(site) / "aiobotocore").is_dir():
        return
    print(f"installing the peer's aiobotocore and the matching botocore into {site} (not the venv)", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, *PEER_PINS],
        check=True,
    )


def run_side(
    args: argparse.Namespace, moto: MotoServer, connection: str, side: str, job_ids: list[str], workdir: Path
) -> SideResult:
    n = len(job_ids)
    params_path, out_path = workdir / f"{side}-{n}.json", workdir / f"{side}-{n}.out.json"
    params = {"side": side, "job_ids": job_ids, "interval": args.interval, "window_s": args.window_s}
    params_path.write_text(json.dumps({**params, "out": str(out_path)}))
    env = {
        **os.environ,
        f"AIRFLOW_CONN_{CONN_ID.upper()}": connection,
        "PYTHONPATH": os.pathsep.join([args.peer_site, str(REPO)]),
    }
    load_before = os.getloadavg()[0]
    with open(workdir / f"{side}-{n}.log", "wb") as child_log:
        subprocess.run(
            [sys.executable, __file__, "--child", str(params_path)],
            env=env,
            check=True,
            timeout=args.window_s + 300,
            stdout=child_log,
            stderr=subprocess.STDOUT,
        )
    data = json.loads(out_path.read_text())
    requests = moto.recorder.between(data["t0"], data["t1"])
    describes = [r for r in requests if r.action == "DescribeJobs"]
    asked: set[str] = set()
    wanted = set(job_ids)
    all_asked_after = None
    for r in describes:
        asked.update(r.job_ids)
        if wanted <= asked:
            all_asked_after = r.at - data["t0"]
            break
    steady = [r for r in describes if data["steady_from"] <= r.at <= data["steady_to"]]
    steady_span = data["steady_to"] - data["steady_from"]
    others: dict[str, int] = {}
    for r in requests:
        if r.action != "DescribeJobs":
            others[r.action] = others.get(r.action, 0) + 1
    return SideResult(
        side=side,
        n=n,
        window_s=data["t1"] - data["t0"],
        describe_calls=len(describes),
        describe_ids=sum(len(r.job_ids) for r in describes),
        all_calls=len(requests),
        steady_describe_per_poll=len(steady) / steady_span * args.interval if steady_span else 0.0,
        all_asked_after_s=all_asked_after,
        cpu_s=data["cpu_s"],
        steady_cpu_per_poll_s=data["steady_cpu_per_poll_s"],
        worst_lag_s=data["worst_lag_s"],
        steady_worst_lag_s=data["steady_worst_lag_s"],
        late_total_s=data["late_total_s"],
        rss_kib_per_job=data["rss_kib_per_job"],
        rss_mib_end=data["rss_mib_end"],
        fired=data["fired"],
        errors=data["errors"],
        cancel_s=data["cancel_s"],
        still_running_after_cancel=data["still_running_after_cancel"],
        load_before=load_before,
        other_calls=others,
    )


def _ratio(peer: float, ours: float) -> str:
    if not ours:
        return "-"
    value = peer / ours
    return f"{value:.0f}x" if value >= 10 else f"{value:.1f}x"


def print_tables(args: argparse.Namespace, results: list[SideResult], skipped: list[str]) -> None:
    print(
        f"\none event loop per side (a child process), N triggers started at t=0, {args.interval:g} s polls, "
        f"window {args.window_s:g} s, moto server mode on 127.0.0.1, jobs held RUNNING, INFO logging off\n"
    )
    header = (
        f"{'N':>5} {'side':<5} {'DescribeJobs/min':>16} {'ids/call':>8} {'AWS req/min':>11} {'all asked':>9} "
        f"{'CPU s':>6} {'CPU s/poll':>10} {'worst lag':>9} {'late s':>6} {'RSS KiB/job':>11} {'fired':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ids = r.describe_ids / r.describe_calls if r.describe_calls else 0.0
        asked = f"{r.all_asked_after_s:.1f}s" if r.all_asked_after_s is not None else "never"
        print(
            f"{r.n:>5} {r.side:<5} {r.describe_per_min:>16.0f} {ids:>8.1f} {r.all_per_min:>11.0f} {asked:>9} "
            f"{r.cpu_s:>6.2f} {r.steady_cpu_per_poll_s:>10.3f} {r.worst_lag_s:>8.2f}s {r.late_total_s:>6.1f} "
            f"{r.rss_kib_per_job:>11.0f} {r.fired:>5}"
        )
    print(
        "\n  DescribeJobs/min and AWS req/min: counted at the moto server over the child's window (start-up "
        "included);\n  ids/call: job ids per DescribeJobs; all asked: when every job had been asked about once; "
        "CPU s: the child's\n  process CPU over the window; CPU s/poll: steady (last third of the window); "
        "worst lag / late s: the 0.1 s\n  probe's worst lateness and its lateness summed over the window; "
        "fired: triggers that ended (jobs stay RUNNING)."
    )
    print("\nratios, peer / ours (same run):")
    for n in sorted({r.n for r in results}):
        ours = next((r for r in results if r.n == n and r.side == "ours"), None)
        peer = next((r for r in results if r.n == n and r.side == "peer"), None)
        if ours is None or peer is None:
            continue
        print(
            f"  N={n}: DescribeJobs/min {_ratio(peer.describe_per_min, ours.describe_per_min)} "
            f"(target ceil(N/100) = {math.ceil(n / 100)} per poll; steady {peer.steady_describe_per_poll:.0f} vs "
            f"{ours.steady_describe_per_poll:.1f} per poll), all AWS requests/min "
            f"{_ratio(peer.all_per_min, ours.all_per_min)}, CPU over the window {_ratio(peer.cpu_s, ours.cpu_s)}, "
            f"steady CPU per poll {_ratio(peer.steady_cpu_per_poll_s, ours.steady_cpu_per_poll_s)}, worst loop lag "
            f"{peer.worst_lag_s:.2f}s vs {ours.worst_lag_s:.2f}s, RSS per job "
            f"{_ratio(peer.rss_kib_per_job, ours.rss_kib_per_job)}"
        )
    print("\nother requests in the window, by side:")
    for r in results:
        print(
            f"  N={r.n} {r.side}: {r.other_calls or '{}'}; load avg before {r.load_before:.2f}; "
            f"cancel took {r.cancel_s:.1f}s ({r.still_running_after_cancel} still running); errors {r.errors}; "
            f"RSS at end {r.rss_mib_end:.0f} MiB"
        )
    for line in skipped:
        print(f"SKIPPED: {line}")


def parent_main(args: argparse.Namespace) -> int:
    import logging

    from tests.integration.batch.moto_batch import HeldJobs, MotoAws

    started = time.monotonic()
    sizes = [int(x) for x in args.sizes.split(",")]
    sides = args.sides.split(",")
    ensure_peer_site(args.peer_site)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    held = HeldJobs()
    installing = cast(Generator[None, None, None], held.install())  # typed Iterator in moto_batch.py
    next(installing)
    moto = MotoServer.start()
    results: list[SideResult] = []
    skipped: list[str] = []
    try:
        aws = MotoAws(url=moto.url, held=held)
        batch = aws.client("batch")
        definition = batch.register_job_definition(
            jobDefinitionName="peers-bench",
            type="container",
            containerProperties={"image": "bench:1", "vcpus": 1, "memory": 512},
        )["jobDefinitionArn"]
        queue = aws.make_queue(f"peers-bench-{int(time.time())}", held=True)
        job_ids = [
            batch.submit_job(jobName=f"p{i}", jobQueue=queue, jobDefinition=definition)["jobId"]
            for i in range(max(sizes))
        ]
        now_ms = int(time.time() * 1000)
        for job_id in job_ids:  # so our side's CloudWatch reads find their streams, as in batch_poller.py
            aws.put_lines(str(HeldJobs.job(job_id).log_stream_name), [(now_ms, "hello")])
        not_running = [j for j in job_ids if HeldJobs.job(j).status != "RUNNING"]
        print(f"{len(job_ids)} jobs held RUNNING ({len(not_running)} not) in {time.monotonic() - started:.0f}s")
        with tempfile.TemporaryDirectory(prefix="peers-batch-") as workdir:
            for n in sizes:
                for side in sides:
                    if side == "peer" and args.peer_max_n and n > args.peer_max_n:
                        skipped.append(f"N={n} peer (over --peer-max-n {args.peer_max_n})")
                        continue
                    spent = time.monotonic() - started
                    if spent + args.window_s + 60 > args.budget_s:
                        skipped.append(f"N={n} {side} (would pass the {args.budget_s:.0f}s budget at {spent:.0f}s)")
                        continue
                    result = run_side(args, moto, aws.connection_uri(), side, job_ids[:n], Path(workdir))
                    summary = {k: v for k, v in asdict(result).items() if k != "other_calls"}
                    print(f"N={n} {side}: {json.dumps(summary)}", flush=True)
                    results.append(result)
        for job_id in job_ids:
            held.finish(job_id, success=True, exit_code=0)
    finally:
        moto.stop()
        installing.close()
    print_tables(args, results, skipped)
    print(
        f"\n{datetime.date.today()}, whole run {time.monotonic() - started:.0f}s; "
        f"{_versions()}; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    return 0


def _versions() -> str:
    import importlib.metadata as metadata

    venv = [("apache-airflow", None), ("apache-airflow-providers-amazon", None), ("moto", None), ("werkzeug", None)]
    shown = [f"{name} {metadata.version(name)}" for name, _ in venv]
    return ", ".join(shown) + f"; children: {', '.join(PEER_PINS)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--sizes", default="100,500,1000")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--sides", default="ours,peer")
    parser.add_argument("--peer-site", default=PEER_SITE, help="where the peer's aiobotocore is (installed if absent)")
    parser.add_argument("--peer-max-n", type=int, default=0, help="skip the peer above this N (0: no limit)")
    parser.add_argument("--budget-s", type=float, default=720.0, help="skip runs that would end after this")
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return 0
    sys.path.insert(0, str(REPO))
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
