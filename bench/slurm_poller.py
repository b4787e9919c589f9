"""Benchmark: N deferred Slurm jobs watched by N real ``SlurmJobTrigger`` runs in ONE event loop.

Prints figures, asserts nothing. For every N in ``--sizes``:

1. submits N held jobs (``sbatch --hold --parsable --wrap true``) in one SSH exec with a shell loop,
   each with the comment ``airflow-hpc-bench:<run>:<i>`` and its output file under
   ``~/airflow-hpc-bench/<run>-n<N>/``;
2. starts a child process (a fresh interpreter: the "triggerer") that runs one ``asyncio.run`` loop
   with N ``SlurmJobTrigger(...).run()`` generators, each in its own task as Airflow's TriggerRunner
   drives them, all started at t=0, plus a 0.1 s sleeper that measures loop lag;
3. lets it run through start-up (until one poll has covered all N jobs) and then ``--polls`` steady
   intervals, and measures: SSH connections (the shared poller's transport counters and the
   ``Accepted publickey`` lines sshd logged meanwhile), remote commands per poll, the child's CPU per
   poll in steady state (``time.process_time``, all threads), start-up CPU, the worst loop lag and the
   child's RSS per watched job;
4. cancels the trigger tasks, then cancels the N jobs with one ``scancel`` of their ids (always, in a
   ``finally``) and removes the job directory only if it is empty.

The child has one pass-through counting wrapper: ``ClusterPoller.poll_once`` is wrapped to take a
timestamp, the CPU clock and the transport counters after every poll. Nothing in the provider is
changed. The connection comes from ``AIRFLOW_CONN_<ID>`` (``--env-file`` is read when it is not set);
``BaseHook.aget_connection`` finds it with no supervisor: without ``SUPERVISOR_COMMS`` and without
``_AIRFLOW_PROCESS_CONTEXT``, ``airflow.sdk.execution_time.supervisor.ensure_secrets_backend_loaded``
returns the fallback chain, which is the environment-variable backend (plus any configured backend).

Peer figures are copied, as data, from ``reference/peer-baselines.md`` (measured 2026-11-21 on a
machine like this one: 2 vCPU, Python 3.11.7, Airflow 3.3.2, asyncssh 2.24.1, OpenSSH 9.2p1 at its
default MaxStartups/MaxSessions, Slurm 22.05.8, INFO logging, 5 s polls).

    .venv/bin/python bench/slurm_poller.py --sizes 100,500,1000 [--interval 5] [--polls 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ENV_FILE = "/tmp/airflow-hpc-cluster/airflow.env"
DEFAULT_SSHD_LOG = "/tmp/airflow-hpc-cluster/ssh/sshd.log"
COMMENT_PREFIX = "airflow-hpc-bench"
REMOTE_ROOT = "airflow-hpc-bench"  # under the login user's home

# Targets (DESIGN.md, "Targets"): one triggerer loop, 5 s polls, N=500.
TARGET_CONNECTIONS = 1
TARGET_STATUS_COMMANDS_PER_POLL = 1
TARGET_LOOP_CPU_MS_PER_POLL = 10.0
TARGET_AT_N = 500


@dataclass(frozen=True)
class PeerRow:
    """One row of reference/peer-baselines.md, INFO logging, 5 s polls, steady state."""

    label: str
    n: int
    connections: str
    commands_per_poll: float
    loop_cpu_s_per_poll: float
    startup_cpu_s: float
    rss_kib_per_job: float | None = None


# reference/peer-baselines.md, section 1 (SSHRemoteJobTrigger, INFO) and section 3 (Slurm minimum:
# one asyncssh connection, one `squeue -h -j <ids> -o '%i|%T'` per poll, no triggers, CPU of the
# poller alone; "startup" is its first poll including the connect). RSS: section 1, "about 43 KB
# per trigger" at N=500 (137 -> 158 MB).
PEER_SSH: dict[int, PeerRow] = {
    500: PeerRow("SSHRemoteJobTrigger", 500, "500 held + 724 refused", 858, 0.829, 6.08, 43.0),
    1000: PeerRow("SSHRemoteJobTrigger", 1000, "1000 held + 2504 refused", 1553, 1.56, 23.8),
}
PEER_MINIMUM: dict[int, PeerRow] = {
    500: PeerRow("minimum (1 squeue, no triggers)", 500, "1", 1, 0.0032, 0.27),
    1000: PeerRow("minimum (1 squeue, no triggers)", 1000, "1", 1, 0.0033, 0.28),
}
PEER_SOURCE = "reference/peer-baselines.md (../shared/reference/ from this repo), measured 2026-11-21"


# --- what the child reports -------------------------------------------------------------------------


@dataclass
class PollSample:
    index: int
    jobs: int  # job ids in this poll's squeue
    t_end_s: float  # since the triggers were started
    wall_s: float
    cpu_s: float  # process CPU at the end of the poll, since the triggers were started
    cpu_in_poll_s: float  # process CPU spent while this poll_once was in progress
    commands_run: int
    connections_opened: int
    error: str | None = None


@dataclass
class ChildResult:
    n: int
    interval_s: float
    import_cpu_s: float = 0.0
    idle_cpu_ms_per_s: float = 0.0  # the loop with nothing to do, before the triggers start
    monitor_cpu_ms_per_s: float = 0.0  # the loop with only the lag sleeper, before the triggers start
    rss_base_kib: int = 0
    rss_startup_kib: int = 0
    rss_end_kib: int = 0
    hwm_kib: int = 0
    polls: list[PollSample] = field(default_factory=list)
    startup_poll: int | None = None  # index of the first poll that covered all N jobs
    startup_wall_s: float | None = None
    startup_cpu_s: float | None = None
    steady_polls: int = 0
    steady_cpu_s: float | None = None
    steady_wall_s: float | None = None
    steady_commands: int | None = None
    max_lag_startup_s: float = 0.0
    max_lag_startup_at_s: float = 0.0
    max_lag_steady_s: float = 0.0
    lag_over_100ms_s: float = 0.0
    gc_gen2: int = 0
    gc_gen2_max_s: float = 0.0
    pollers_shared: int = 0
    connections_opened: int = 0
    commands_run: int = 0
    poller_polls: int = 0
    local_ports: list[int] = field(default_factory=list)
    events_before_cancel: list[dict[str, Any]] = field(default_factory=list)
    tasks_failed: list[str] = field(default_factory=list)
    teardown_s: float = 0.0
    needed_second_cancel: int = 0
    not_stopped: int = 0
    pollers_left: int = 0
    cancelled_mid_poll: bool = False  # a status poll was in flight when the triggers were cancelled
    polls_after_cancel: int = 0  # status polls started after the cancel
    problem: str | None = None


@dataclass
class SshdCounts:
    accepted: int
    accepted_ours: int
    dropped: int
    sessions: int  # 'Starting session' lines: sshd logs them at VERBOSE, so 0 at INFO
    log_level: str


@dataclass
class SizeResult:
    n: int
    child: ChildResult
    sshd: SshdCounts | None
    submit_s: float
    cancel_s: float = 0.0
    left_after_cancel: int = -1


# --- the child: one event loop playing the triggerer ------------------------------------------------


def _rss_kib(field_name: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


class _Recorder:
    """Collects poll samples from the wrapped ``ClusterPoller.poll_once``; wakes whoever waits."""

    def __init__(self, result: ChildResult) -> None:
        self.result = result
        self.t0 = 0.0
        self.cpu0 = 0.0
        self.changed = asyncio.Event()
        self.in_poll = asyncio.Event()  # set while a status poll is in flight
        self.polls_started = 0
        self.poller: Any = None

    def install(self) -> None:
        from airflow_hpc_provider.watching.cluster import ClusterPoller

        original: Callable[[Any], Awaitable[None]] = ClusterPoller.poll_once
        recorder = self

        async def poll_once(poller: Any) -> None:  # pass-through: calls the original, re-raises
            recorder.poller = poller
            recorder.polls_started += 1
            recorder.in_poll.set()
            jobs = len(poller._tracks)
            start = time.monotonic()
            cpu_start = time.process_time()
            error: str | None = None
            try:
                await original(poller)
            except BaseException as exc:
                error = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                recorder.in_poll.clear()
                transport = poller.transport
                recorder.result.polls.append(
                    PollSample(
                        index=len(recorder.result.polls),
                        jobs=jobs,
                        t_end_s=time.monotonic() - recorder.t0,
                        wall_s=time.monotonic() - start,
                        cpu_s=time.process_time() - recorder.cpu0,
                        cpu_in_poll_s=time.process_time() - cpu_start,
                        commands_run=transport.commands_run,
                        connections_opened=transport.connections_opened,
                        error=error,
                    )
                )
                conn = transport._conn
                if conn is not None:
                    sockname = conn.get_extra_info("sockname")
                    if sockname and sockname[1] not in recorder.result.local_ports:
                        recorder.result.local_ports.append(int(sockname[1]))
                recorder.changed.set()

        ClusterPoller.poll_once = poll_once  # type: ignore[method-assign,assignment]


async def _wait_for(recorder: _Recorder, done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        recorder.changed.clear()
        try:
            await asyncio.wait_for(recorder.changed.wait(), remaining)
        except TimeoutError:
            return done()
    return True


async def _child_main(params: dict[str, Any], result: ChildResult, recorder: _Recorder) -> None:
    from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
    from airflow_hpc_provider.watching import cluster as poller_module

    job_ids: list[str] = params["job_ids"]
    remote_dir: str = params["remote_dir"]
    interval: float = params["interval"]
    n = len(job_ids)
    phase = "baseline"
    lag_max = {"baseline": 0.0, "startup": 0.0, "steady": 0.0, "teardown": 0.0}
    lagged = [0.0]

    async def lag_monitor() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            now = time.monotonic()
            late = now - before - 0.1
            if late > lag_max[phase]:
                lag_max[phase] = late
                if phase == "startup":
                    result.max_lag_startup_at_s = now - recorder.t0
            if phase == "steady" and late > 0.1:
                lagged[0] += late

    # What the loop costs with nothing to watch, without and with the 0.1 s lag sleeper: the
    # sleeper's own CPU is in every figure below, as it was in the peers' figures.
    cpu_idle = time.process_time()
    await asyncio.sleep(2.0)
    result.idle_cpu_ms_per_s = (time.process_time() - cpu_idle) / 2.0 * 1000
    monitor = asyncio.create_task(lag_monitor(), name="bench-lag-monitor")
    cpu_idle = time.process_time()
    await asyncio.sleep(4.0)
    result.monitor_cpu_ms_per_s = (time.process_time() - cpu_idle) / 4.0 * 1000

    events: list[dict[str, Any]] = []

    async def drive(trigger: SlurmJobTrigger) -> None:
        # What TriggerRunner does with a trigger: iterate run(), keep the event(s), then cleanup().
        try:
            async for event in trigger.run():
                events.append({"job_id": trigger.job_id, "payload": event.payload})
        finally:
            await trigger.cleanup()

    gc.collect()
    result.rss_base_kib = _rss_kib()
    phase = "startup"
    recorder.t0 = time.monotonic()
    recorder.cpu0 = time.process_time()
    triggers = [
        SlurmJobTrigger(
            conn_id=params["conn_id"],
            job_id=job_id,
            log_path=f"{remote_dir}/{job_id}.out",
            cursor_path=f"{remote_dir}/{job_id}.cursor",
            poll_interval=interval,
        )
        for job_id in job_ids
    ]
    tasks = [asyncio.create_task(drive(t), name=f"trigger-{t.job_id}") for t in triggers]

    def covered_all() -> bool:
        return any(s.jobs == n and s.error is None for s in result.polls)

    startup_timeout = max(60.0, 4 * interval + n * 0.05)
    if not await _wait_for(recorder, covered_all, startup_timeout):
        result.problem = f"no poll covered all {n} jobs within {startup_timeout:.0f}s"
    else:
        first = next(s for s in result.polls if s.jobs == n and s.error is None)
        result.startup_poll = first.index
        result.startup_wall_s = first.t_end_s
        result.startup_cpu_s = first.cpu_s
        result.rss_startup_kib = _rss_kib()
        phase = "steady"
        want = first.index + params["polls"]
        steady_timeout = params["polls"] * interval * 3 + 60
        if not await _wait_for(recorder, lambda: len(result.polls) > want, steady_timeout):
            got = len(result.polls) - 1 - first.index
            result.problem = f"only {got} steady polls in {steady_timeout:.0f}s"
        last = result.polls[-1]
        result.steady_polls = last.index - first.index
        if result.steady_polls > 0:
            result.steady_cpu_s = last.cpu_s - first.cpu_s
            result.steady_wall_s = last.t_end_s - first.t_end_s
            result.steady_commands = last.commands_run - first.commands_run
    result.rss_end_kib = _rss_kib()
    result.hwm_kib = _rss_kib("VmHWM")
    result.pollers_shared = len(poller_module._shared)
    shared = list(poller_module._shared.values())
    if shared:
        p = shared[0].poller
        result.connections_opened = p.transport.connections_opened
        result.commands_run = p.transport.commands_run
        result.poller_polls = p.polls
    elif recorder.poller is not None:
        result.connections_opened = recorder.poller.transport.connections_opened
        result.commands_run = recorder.poller.transport.commands_run
        result.poller_polls = recorder.poller.polls
    result.events_before_cancel = list(events)
    result.tasks_failed = [
        f"{t.get_name()}: {t.exception()!r}" for t in tasks if t.done() and not t.cancelled() and t.exception()
    ]

    # Teardown: cancel every trigger task as a triggerer would when the triggers go away, in the
    # middle of a status poll (the moment a cancellation is easiest to lose).
    phase = "teardown"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2 * interval + 30):
            await recorder.in_poll.wait()
    result.cancelled_mid_poll = recorder.in_poll.is_set()
    polls_before_cancel = recorder.polls_started
    start = time.monotonic()
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=5.0)
    result.needed_second_cancel = len(pending)  # still running 5 s after the cancel
    result.polls_after_cancel = recorder.polls_started - polls_before_cancel
    if pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=10.0)
    result.not_stopped = len(pending)
    result.teardown_s = time.monotonic() - start
    result.pollers_left = len(poller_module._shared)
    result.max_lag_startup_s = lag_max["startup"]
    result.max_lag_steady_s = lag_max["steady"]
    result.lag_over_100ms_s = lagged[0]
    monitor.cancel()


def run_child(params_path: str) -> None:
    params = json.loads(Path(params_path).read_text())
    result = ChildResult(n=len(params["job_ids"]), interval_s=params["interval"])
    cpu = time.process_time()
    import airflow.sdk  # noqa: F401  (imports and configures Airflow, as in a triggerer)

    import airflow_hpc_provider.triggers.slurm  # noqa: F401

    result.import_cpu_s = time.process_time() - cpu
    gc_start: list[float] = []

    def on_gc(stage: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if stage == "start":
            gc_start.append(time.perf_counter())
        elif gc_start:
            result.gc_gen2 += 1
            result.gc_gen2_max_s = max(result.gc_gen2_max_s, time.perf_counter() - gc_start.pop())

    gc.callbacks.append(on_gc)

    async def main() -> None:
        recorder = _Recorder(result)
        recorder.install()
        await _child_main(params, result, recorder)

    try:
        asyncio.run(main())
    except BaseException as exc:
        result.problem = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        Path(params["result_path"]).write_text(json.dumps(asdict(result)))


# --- the parent: submit, run the child, read sshd's log, cancel --------------------------------------


def load_env_file(path: str) -> None:
    """Read ``NAME='value'`` lines (the cluster's airflow.env) into os.environ, unless already set."""
    file = Path(path)
    if not file.exists():
        return
    for line in file.read_text().splitlines():
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            continue
        words = shlex.split(value)
        os.environ.setdefault(name, words[0] if words else "")


def run_on_cluster(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    main_async: Callable[[argparse.Namespace], Awaitable[int]],
) -> int:
    """What every cluster bench does around its own arguments: name the connection (and the
    cluster's env file that defines it), parse, read that file, run ``main_async``."""
    parser.add_argument("--conn-id", default="slurm_local", help="Airflow connection of the cluster")
    parser.add_argument("--env-file", default=DEFAULT_ENV_FILE, help="read when AIRFLOW_CONN_<ID> is not set")
    args = parser.parse_args(argv)
    if f"AIRFLOW_CONN_{args.conn_id.upper()}" not in os.environ:
        load_env_file(args.env_file)
    return asyncio.run(main_async(args))


class Cluster:
    """The parent's SSH exec, through the provider's own transport (one connection per call)."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id

    async def _run(self, script: str, timeout_s: float) -> tuple[int | None, str, str]:
        from airflow.sdk import BaseHook

        from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport

        target = SshTarget.from_connection(await BaseHook.aget_connection(self.conn_id))
        transport = SshTransport(target)
        try:
            result = await transport.run(script, timeout_s=timeout_s)
        finally:
            await transport.close()
        return result.exit_status, result.text, result.error_text

    def run(self, script: str, timeout_s: float = 600.0) -> tuple[int | None, str, str]:
        return asyncio.run(self._run(script, timeout_s))


def submit_script(remote_dir: str, comment: str, n: int) -> str:
    return (
        f'd="$HOME"/{shlex.quote(remote_dir)}\n'
        'mkdir -p -- "$d" || exit 1\n'
        "i=1\n"
        f'while [ "$i" -le {n} ]; do\n'
        "  _o=$(sbatch --hold --parsable --job-name=airflow-hpc-bench "
        f'--comment={shlex.quote(comment)}:"$i" --output="$d/%j.out" --wrap true 2>&1) '
        '|| { printf \'FAIL %s %s\\n\' "$i" "$_o"; exit 1; }\n'
        "  printf 'JOB %s\\n' \"${_o%%;*}\"\n"
        "  i=$((i + 1))\n"
        "done\n"
    )


def cancel_script(remote_dir: str, comment: str, job_ids: Sequence[str]) -> str:
    """scancel by id; with no ids known (submission output lost), by our unique comment; then count."""
    ids = " ".join(shlex.quote(i) for i in job_ids)
    find = (
        "squeue -h -u \"$(id -un)\" -t PENDING,RUNNING,SUSPENDED -O 'JobID:|,Comment:|' | "
        f"awk -F'|' -v p={shlex.quote(comment + ':')} 'index($2, p) == 1 {{ print $1 }}'"
    )
    head = f"scancel -- {ids}\n" if ids else f'_ids=$({find}); [ -z "$_ids" ] || scancel -- $_ids\n'
    return (
        head
        + "sleep 1\n"
        + f"printf 'LEFT %s\\n' \"$({find} | wc -l | tr -d ' ')\"\n"
        # Only our own directory, and only if it is empty (held jobs never write).
        + f'rmdir -- "$HOME"/{shlex.quote(remote_dir)} "$HOME"/{REMOTE_ROOT} 2>/dev/null\n'
        + "exit 0\n"
    )


def sshd_counts(log_path: str, offset: int, ports: Sequence[int]) -> SshdCounts | None:
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return None
    accepted = re.findall(r"Accepted publickey for \S+ from \S+ port (\d+)", text)
    return SshdCounts(
        accepted=len(accepted),
        accepted_ours=sum(1 for port in accepted if int(port) in ports),
        dropped=len(re.findall(r"drop connection #\d+ .* past MaxStartups", text)),
        sessions=len(re.findall(r"Starting session:", text)),
        log_level=_sshd_log_level(log_path),
    )


def _sshd_log_level(log_path: str) -> str:
    config = Path(log_path).with_name("sshd_config")
    try:
        match = re.search(r"^\s*LogLevel\s+(\S+)", config.read_text(), re.MULTILINE | re.IGNORECASE)
    except OSError:
        return "?"
    return match.group(1).upper() if match else "INFO"


def run_size(args: argparse.Namespace, cluster: Cluster, n: int, run_id: str, workdir: Path) -> SizeResult:
    remote_dir = f"{REMOTE_ROOT}/{run_id}-n{n}"
    comment = f"{COMMENT_PREFIX}:{run_id}-n{n}"
    job_ids: list[str] = []
    result: SizeResult | None = None
    try:
        print(f"[N={n}] submitting {n} held jobs in one SSH exec ...", flush=True)
        start = time.monotonic()
        status, out, err = cluster.run(submit_script(remote_dir, comment, n))
        job_ids = [line.split()[1] for line in out.splitlines() if line.startswith("JOB ")]
        submit_s = time.monotonic() - start
        if status != 0 or len(job_ids) != n:
            raise RuntimeError(f"submission exited {status} after {len(job_ids)} jobs: {out[-500:]} {err[-500:]}")
        print(f"[N={n}] submitted jobs {job_ids[0]}..{job_ids[-1]} in {submit_s:.1f}s", flush=True)

        params_path = workdir / f"params-n{n}.json"
        result_path = workdir / f"result-n{n}.json"
        child_log = workdir / f"child-n{n}.log"
        params_path.write_text(
            json.dumps(
                {
                    "conn_id": args.conn_id,
                    "job_ids": job_ids,
                    "remote_dir": remote_dir,
                    "interval": args.interval,
                    "polls": args.polls,
                    "result_path": str(result_path),
                }
            )
        )
        offset = Path(args.sshd_log).stat().st_size if Path(args.sshd_log).exists() else 0
        timeout = 120 + max(60.0, 4 * args.interval + n * 0.05) + args.polls * args.interval * 3 + 60
        print(f"[N={n}] child triggerer: {n} SlurmJobTrigger tasks, log {child_log}", flush=True)
        with open(child_log, "wb") as log:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", str(params_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if not result_path.exists():
            raise RuntimeError(f"the child exited {proc.returncode} without a result; see {child_log}")
        child = _child_result(json.loads(result_path.read_text()))
        if proc.returncode != 0 and child.problem is None:
            child.problem = f"child exited {proc.returncode}; see {child_log}"
        sshd = sshd_counts(args.sshd_log, offset, child.local_ports)
        result = SizeResult(n, child, sshd, submit_s)
    finally:
        # Always, also on error or Ctrl-C: the ids we know, else the jobs carrying this run's comment.
        start = time.monotonic()
        status, out, err = cluster.run(cancel_script(remote_dir, comment, job_ids))
        cancel_s = time.monotonic() - start
        match = re.search(r"^LEFT (\d+)", out, re.MULTILINE)
        left = int(match.group(1)) if match else -1
        print(
            f"[N={n}] scancel of {len(job_ids) or 'our'} jobs: exit {status}, {left} of them left, "
            f"{cancel_s:.1f}s {err.strip()[:200]}",
            flush=True,
        )
    result.cancel_s, result.left_after_cancel = cancel_s, left
    return result


def _child_result(data: dict[str, Any]) -> ChildResult:
    polls = [PollSample(**p) for p in data.pop("polls")]
    return ChildResult(**data, polls=polls)


# --- printing ----------------------------------------------------------------------------------------


def _per_job_us(ms: float | None, n: int) -> float | None:
    return None if ms is None else ms / n * 1000


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def cpu_ms_per_poll(r: SizeResult) -> float | None:
    c = r.child
    return None if c.steady_cpu_s is None or not c.steady_polls else c.steady_cpu_s / c.steady_polls * 1000


def probe_ms_per_poll(r: SizeResult) -> float | None:
    """The lag sleeper's own CPU (measured alone, less the idle loop) over one steady poll period."""
    c = r.child
    if c.steady_wall_s is None or not c.steady_polls:
        return None
    probe_ms_per_s = max(0.0, c.monitor_cpu_ms_per_s - c.idle_cpu_ms_per_s)
    return probe_ms_per_s * c.steady_wall_s / c.steady_polls


def net_cpu_ms_per_poll(r: SizeResult) -> float | None:
    gross, probe = cpu_ms_per_poll(r), probe_ms_per_poll(r)
    return None if gross is None or probe is None else max(0.0, gross - probe)


def commands_per_poll(r: SizeResult) -> float | None:
    c = r.child
    return None if c.steady_commands is None or not c.steady_polls else c.steady_commands / c.steady_polls


def table_rows(results: Sequence[SizeResult]) -> list[list[str]]:
    rows = []
    for r in results:
        c = r.child
        sshd = "n/a" if r.sshd is None else f"{r.sshd.accepted_ours} ({r.sshd.accepted} all)"
        lag = max(c.max_lag_startup_s, c.max_lag_steady_s) * 1000
        rows.append(
            [
                str(r.n),
                f"{c.connections_opened} | sshd {sshd}",
                _fmt(commands_per_poll(r), ".2f"),
                f"{_fmt(cpu_ms_per_poll(r), '.1f')} ({_fmt(net_cpu_ms_per_poll(r), '.1f')})",
                _fmt(c.startup_cpu_s, ".2f"),
                f"{lag:.0f} ({c.max_lag_steady_s * 1000:.0f})",
                f"{(c.rss_end_kib - c.rss_base_kib) / r.n:.1f}",
            ]
        )
    return rows


HEADERS = [
    "N",
    "conns opened (transport | sshd log: ours (all))",
    "status commands per poll",
    "loop CPU ms per poll, steady (net of lag probe)",
    "startup CPU s",
    "max loop lag ms, run (steady)",
    "RSS KiB/job",
]


def print_table(results: Sequence[SizeResult]) -> None:
    rows = [HEADERS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    for k, row in enumerate(rows):
        print(" | ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if k == 0:
            print("-+-".join("-" * width for width in widths))


def print_details(r: SizeResult) -> None:
    c = r.child
    print(f"\nN={r.n}:")
    print(
        f"  submit {r.submit_s:.1f}s (one exec); child import CPU {c.import_cpu_s:.2f}s; "
        f"idle loop {c.idle_cpu_ms_per_s:.2f} ms CPU/s, with the 0.1 s lag probe "
        f"{c.monitor_cpu_ms_per_s:.2f} ms CPU/s (probe = {_fmt(probe_ms_per_poll(r), '.1f')} ms "
        "per steady poll period: in the gross figures, taken out of the net ones)"
    )
    if c.startup_poll is not None:
        first_cover = c.polls[c.startup_poll]
        print(
            f"  start-up: all {r.n} jobs first polled in poll #{c.startup_poll} (0-based), "
            f"{c.startup_wall_s:.2f}s after the tasks started; CPU {c.startup_cpu_s:.2f}s; "
            f"max lag {c.max_lag_startup_s * 1000:.0f} ms at t={c.max_lag_startup_at_s:.2f}s; "
            f"that poll's wall {first_cover.wall_s * 1000:.0f} ms"
        )
        early = c.polls[: c.startup_poll]
        if early:
            print(
                "  earlier polls covered only "
                + ", ".join(f"{p.jobs} job(s) (ended t={p.t_end_s:.2f}s, {p.wall_s * 1000:.0f} ms)" for p in early)
                + ": the other jobs waited for the next interval"
            )
    steady = c.polls[c.startup_poll + 1 :] if c.startup_poll is not None else []
    per_poll = cpu_ms_per_poll(r)
    if steady and per_poll is not None:
        walls = [p.wall_s * 1000 for p in steady]
        print(
            f"  steady: {c.steady_polls} polls over {c.steady_wall_s:.1f}s, CPU {c.steady_cpu_s:.3f}s "
            f"= {per_poll:.1f} ms/poll gross, {_fmt(net_cpu_ms_per_poll(r), '.1f')} ms net of the probe "
            f"({_fmt(_per_job_us(net_cpu_ms_per_poll(r), r.n), '.1f')} µs per job-poll); "
            f"CPU while poll_once ran {sum(p.cpu_in_poll_s for p in steady) / len(steady) * 1000:.1f} ms "
            f"per poll; poll wall mean {sum(walls) / len(walls):.0f} ms, max {max(walls):.0f} ms; "
            f"commands {c.steady_commands}; max lag {c.max_lag_steady_s * 1000:.0f} ms, "
            f"late >100 ms for {c.lag_over_100ms_s:.2f}s"
        )
    print(
        f"  whole run: {c.poller_polls} polls, {c.commands_run} commands "
        f"({c.commands_run / max(c.poller_polls, 1):.2f} per poll), "
        f"{c.connections_opened} SSH connection(s) opened, {c.pollers_shared} shared poller(s)"
    )
    if r.sshd is not None:
        session_note = (
            f"{r.sshd.sessions}"
            if r.sshd.log_level not in ("INFO", "QUIET", "FATAL", "ERROR")
            else f"{r.sshd.sessions} (n/a: sshd LogLevel {r.sshd.log_level} logs sessions only at VERBOSE)"
        )
        print(
            f"  sshd log during the child: {r.sshd.accepted} 'Accepted publickey' ({r.sshd.accepted_ours} "
            f"from our poller's port(s) {c.local_ports}, the rest other clients of the shared cluster); "
            f"{r.sshd.dropped} MaxStartups drops; 'Starting session' lines: {session_note}"
        )
    print(
        f"  RSS {c.rss_base_kib / 1024:.1f} -> {c.rss_startup_kib / 1024:.1f} (start-up) -> "
        f"{c.rss_end_kib / 1024:.1f} MiB (end), peak {c.hwm_kib / 1024:.1f} MiB; "
        f"gen-2 GCs {c.gc_gen2}, longest {c.gc_gen2_max_s * 1000:.0f} ms"
    )
    print(
        f"  teardown: {r.n} tasks cancelled {'mid-poll' if c.cancelled_mid_poll else 'between polls'} "
        f"in {c.teardown_s:.2f}s; still running 5 s after the cancel: {c.needed_second_cancel} (target 0), "
        f"{c.not_stopped} never stopped; status polls started after the cancel {c.polls_after_cancel}; "
        f"shared pollers left {c.pollers_left}"
    )
    if c.events_before_cancel:
        print(
            f"  UNEXPECTED: {len(c.events_before_cancel)} trigger events before cancel, first: "
            f"{c.events_before_cancel[0]}"
        )
    if c.tasks_failed:
        print(f"  UNEXPECTED: {len(c.tasks_failed)} trigger tasks failed, first: {c.tasks_failed[0]}")
    if c.problem:
        print(f"  PROBLEM: {c.problem}")
    print(f"  scancel by ids: {r.cancel_s:.1f}s (one exec), jobs of this run left in the queue: {r.left_after_cancel}")


def _ratio(ours: float | None, theirs: float) -> str:
    if ours is None:
        return "n/a"
    if ours == 0:
        return "inf"
    return f"{theirs / ours:.0f}x less" if theirs >= ours else f"{ours / theirs:.1f}x more"


def print_ratios(results: Sequence[SizeResult]) -> None:
    print(
        "\nAgainst the targets (DESIGN.md, 'Targets': 1 connection, <= 1 status command per poll, "
        f"<= {TARGET_LOOP_CPU_MS_PER_POLL:g} ms loop CPU per poll at N={TARGET_AT_N}):"
    )
    for r in results:
        c = r.child
        cmds = commands_per_poll(r)
        cpu, net = cpu_ms_per_poll(r), net_cpu_ms_per_poll(r)
        cpu_note = (
            "n/a"
            if cpu is None or net is None
            else (
                f"{cpu:.1f} ms gross = {cpu / TARGET_LOOP_CPU_MS_PER_POLL:.2f}x the budget, "
                f"{net:.1f} ms net of the lag probe = {net / TARGET_LOOP_CPU_MS_PER_POLL:.2f}x"
            )
        )
        mark = " (the target's N)" if r.n == TARGET_AT_N else ""
        print(
            f"  N={r.n}{mark}: connections {c.connections_opened}/{TARGET_CONNECTIONS}; "
            f"status commands per poll {_fmt(cmds, '.2f')}/{TARGET_STATUS_COMMANDS_PER_POLL}; "
            f"loop CPU per poll {cpu_note}"
        )
    print(
        f"\nAgainst the peers ({PEER_SOURCE}; INFO logging, 5 s polls; only N that were measured there;"
        " the SSH peer ran with the same 0.1 s lag probe, so it is compared with our gross figure,"
        " the minimum ran without one, so it is compared with our net figure):"
    )
    for r in results:
        c = r.child
        cpu, net = cpu_ms_per_poll(r), net_cpu_ms_per_poll(r)
        cpu_s = None if cpu is None else cpu / 1000
        net_s = None if net is None else net / 1000
        cmds = commands_per_poll(r)
        peer = PEER_SSH.get(r.n)
        if peer is not None:
            rss = (c.rss_end_kib - c.rss_base_kib) / r.n
            rss_note = (
                ""
                if peer.rss_kib_per_job is None
                else (f"; RSS/job {rss:.1f} vs {peer.rss_kib_per_job:g} KB ({_ratio(rss, peer.rss_kib_per_job)})")
            )
            print(
                f"  N={r.n} vs {peer.label}: connections {c.connections_opened} vs {peer.connections}; "
                f"commands/poll {_fmt(cmds, '.2f')} vs {peer.commands_per_poll:g} "
                f"({_ratio(cmds, peer.commands_per_poll)}); loop CPU/poll {_fmt(cpu_s, '.4f')} s vs "
                f"{peer.loop_cpu_s_per_poll:g} s ({_ratio(cpu_s, peer.loop_cpu_s_per_poll)}); "
                f"startup CPU {_fmt(c.startup_cpu_s, '.2f')} s vs {peer.startup_cpu_s:g} s "
                f"({_ratio(c.startup_cpu_s, peer.startup_cpu_s)}){rss_note}"
            )
        floor = PEER_MINIMUM.get(r.n)
        if floor is not None:
            over = None if net_s is None else net_s / floor.loop_cpu_s_per_poll
            print(
                f"  N={r.n} vs the {floor.label}: loop CPU/poll net {_fmt(net_s, '.4f')} s vs "
                f"{floor.loop_cpu_s_per_poll:g} s ({_fmt(over, '.1f')}x the floor, which has no triggers "
                f"and parses 2 fields per job); startup CPU {_fmt(c.startup_cpu_s, '.2f')} s vs "
                f"{floor.startup_cpu_s:g} s (first poll incl. connect)"
            )
        if peer is None and floor is None:
            print(f"  N={r.n}: no peer row at this N in peer-baselines.md")


def versions() -> str:
    from importlib.metadata import version

    parts = [f"Python {sys.version.split()[0]}"]
    for dist in ("apache-airflow", "asyncssh", "airflow-hpc-provider"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except Exception:
            parts.append(f"{dist} ?")
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100,500,1000", help="comma-separated N (default 100,500,1000)")
    parser.add_argument("--interval", type=float, default=5.0, help="poll_interval of every trigger, s")
    parser.add_argument("--polls", type=int, default=6, help="steady polls measured after start-up")
    parser.add_argument("--conn-id", default="slurm_local", help="Airflow connection of the cluster")
    parser.add_argument("--env-file", default=DEFAULT_ENV_FILE, help="read when AIRFLOW_CONN_<ID> is not set")
    parser.add_argument("--sshd-log", default=DEFAULT_SSHD_LOG, help="the login node's sshd log, if local")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child)
        return 0
    if f"AIRFLOW_CONN_{args.conn_id.upper()}" not in os.environ:
        load_env_file(args.env_file)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
    workdir = Path(tempfile.mkdtemp(prefix=f"airflow-hpc-bench-{run_id}-"))
    print(
        f"bench run {run_id}: sizes {sizes}, interval {args.interval:g}s, {args.polls} steady polls; "
        f"{versions()}; local files in {workdir}",
        flush=True,
    )
    cluster = Cluster(args.conn_id)
    results: list[SizeResult] = []
    for n in sizes:
        result = run_size(args, cluster, n, run_id, workdir)
        results.append(result)
        print_details(result)
    print(
        f"\nSlurmJobTrigger x N in one event loop, {args.interval:g}s polls, {time.strftime('%Y-%m-%d')}, "
        f"{versions()}, {os.cpu_count()} CPUs"
    )
    print_table(results)
    print_ratios(results)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
