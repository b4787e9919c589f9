"""Delivered means written, on a real Airflow stack: triggerers killed while jobs stream at volume,
and workers killed between submitting and deferring.

Every line must reach the task log (the files the supervisors write and the REST log endpoint);
a line may appear twice only inside a span the log announces as replayed after a restart (at most
one chunk per job per restart). A job that ended while its worker was dead is adopted by the retry
and decides it; it never runs twice.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.deployment.conftest import cancel_jobs_named, job_state, jobs_named, xcom_job_id
from tests.deployment.dags.scenario_common import VOLUME_LINES, VOLUME_TASKS
from tests.deployment.stack import AirflowStack, StackError
from tests.deployment.test_slurm_deployment import job_prefix, triggerer_of
from tests.integration import cluster

pytestmark = [pytest.mark.deployment, pytest.mark.cluster, pytest.mark.slow]

LINE = re.compile(r"^(\S+) line (\d+) of (\d+)$")
REPLAY = re.compile(r"^--- replayed after a triggerer restart: the next (\d+) lines may appear twice ---$")
BLOCKED = re.compile(r"Triggerer's async thread was blocked for ([0-9.]+) seconds")
RESTARTS = 2


def task_log_files(stack: AirflowStack, dag_id: str, run_id: str, task_id: str, try_number: int) -> list[Path]:
    """The files Airflow wrote for one try: the task's own and one per triggerer that ran its trigger."""
    folder = stack.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return sorted(folder.glob(f"attempt={try_number}.log*"))


def file_messages(paths: list[Path]) -> list[str]:
    messages: list[str] = []
    for path in paths:
        for raw in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                messages.append(raw)
                continue
            messages.append(str(entry.get("event", "")) if isinstance(entry, dict) else raw)
    return messages


def check_delivery(messages: list[str], tag: str, expected: int, where: str) -> tuple[int, int, int]:
    """Every numbered line at least once; a repeat only inside an announced replay. Returns
    (missing, repeated, replays)."""
    seen: Counter[int] = Counter()
    replay_left = 0
    replays = 0
    stray: list[int] = []
    for message in messages:
        text = message.strip()
        marker = REPLAY.match(text)
        if marker:
            replays += 1
            replay_left = int(marker.group(1))
            continue
        match = LINE.match(text)
        if not match or match.group(1) != tag:
            continue
        number = int(match.group(2))
        if seen[number] and replay_left <= 0:
            stray.append(number)
        seen[number] += 1
        replay_left -= 1
    missing = [n for n in range(1, expected + 1) if not seen[n]]
    repeated = sum(count - 1 for count in seen.values() if count > 1)
    assert not missing, f"{where}: {len(missing)} lines missing, e.g. {missing[:10]}"
    assert not stray, f"{where}: lines repeated outside an announced replay: {stray[:10]}"
    assert replays <= RESTARTS, f"{where}: {replays} replays for {RESTARTS} restarts"
    return len(missing), repeated, replays


def blocked_warnings(stack: AirflowStack) -> list[float]:
    found: list[float] = []
    for path in stack.home.glob("triggerer-*.log"):
        found.extend(float(m.group(1)) for m in BLOCKED.finditer(path.read_text(errors="replace")))
    return found


def kill_and_replace_triggerer(stack: AirflowStack, dag_id: str, run_id: str) -> float:
    """SIGKILL the live triggerer's process group, start another, wait until it holds the triggers."""
    victim = next(t for t in stack.triggerers if t.alive())
    before = set(triggerer_of(stack, dag_id, run_id).values())
    killed = time.monotonic()
    stack.kill(victim, signal.SIGKILL)
    time.sleep(3)
    stack.start_triggerer()
    stack.wait(
        lambda: not set(triggerer_of(stack, dag_id, run_id).values()) & (before | {None}),
        180,
        "the triggers to be picked up by the new triggerer",
    )
    return time.monotonic() - killed


def test_triggerers_killed_twice_while_ten_jobs_stream_at_volume_lose_no_line_and_repeat_only_announced_ones(
    one_triggerer: AirflowStack,
) -> None:
    stack = one_triggerer
    dag_id = "dep_volume"
    run_id = stack.trigger(dag_id)
    barrier = f".airflow-hpc-barriers/{run_id}"
    try:
        stack.wait_for_states(dag_id, run_id, {"deferred"}, 300)
        cluster.ssh(f"mkdir -p .airflow-hpc-barriers && touch {shlex.quote(barrier)}")
        released = time.monotonic()
        takeovers = []
        for pause in (8, 6):  # mid-stream, then while the new triggerer catches up on the backlog
            time.sleep(pause)
            takeovers.append(kill_and_replace_triggerer(stack, dag_id, run_id))
        run = stack.wait_for_run_end(dag_id, run_id, 600)
        streamed_s = time.monotonic() - released
        tis = stack.task_instances(dag_id, run_id)
        jobs = jobs_named(job_prefix(run_id))
        report = {}
        for index in range(VOLUME_TASKS):
            task_id, tag = f"job_{index}", f"volume-{index}"
            rest = check_delivery(stack.task_log(dag_id, run_id, task_id, 1), tag, VOLUME_LINES, f"{task_id} (REST)")
            files = check_delivery(
                file_messages(task_log_files(stack, dag_id, run_id, task_id, 1)),
                tag,
                VOLUME_LINES,
                f"{task_id} (files)",
            )
            report[task_id] = (rest, files)
    finally:
        cancel_jobs_named(job_prefix(run_id))
        cluster.ssh(f"rm -f {shlex.quote(barrier)}", check=False)

    blocked = blocked_warnings(stack)
    print(
        f"\n{dag_id}: {VOLUME_TASKS} jobs x {VOLUME_LINES} lines at ~100 lines/s; triggerer SIGKILLed twice, "
        f"taken over in {', '.join(f'{s:.1f}s' for s in takeovers)}; run ended {streamed_s:.0f}s after the release"
    )
    for task_id, (rest, files) in report.items():
        print(f"  {task_id}: REST missing/repeated/replays {rest}; files {files}")
    print(f"  triggerer 'blocked' warnings: {len(blocked)}, worst {max(blocked, default=0.0):.2f}s")
    assert run["state"] == "success", [(ti["task_id"], ti["state"]) for ti in tis]
    assert {ti["try_number"] for ti in tis} == {1}
    assert sorted(job.name for job in jobs) == sorted(f"{job_prefix(run_id)}job_{i}" for i in range(VOLUME_TASKS))
    assert {job.state for job in jobs} == {"COMPLETED"}
    assert any(
        "count as delivered once the supervisor read them" in path.read_text(errors="replace")
        for path in (stack.home / "logs" / f"dag_id={dag_id}").rglob("attempt=1.log.trigger.*")
    ), "the triggerer never confirmed writes through its supervisor's log socket"
    assert max(blocked, default=0.0) < 2.0, f"the triggerer's loop was blocked for {max(blocked)}s"


def wait_for_line(stack: AirflowStack, dag_id: str, run_id: str, try_number: int, pattern: str) -> re.Match[str]:
    compiled = re.compile(pattern)

    def found() -> re.Match[str] | None:
        try:
            lines = stack.task_log(dag_id, run_id, "job", try_number)
        except StackError:  # the task instance or its log does not exist yet
            return None
        for line in lines:
            match = compiled.search(line)
            if match:
                return match
        return None

    match: re.Match[str] = stack.wait(found, 180, f"{pattern!r} in try {try_number}'s log")
    return match


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_a_job_that_ended_while_its_worker_was_dead_is_adopted_by_the_retry_and_decides_it(
    one_triggerer: AirflowStack, outcome: str
) -> None:
    stack = one_triggerer
    dag_id = f"dep_adopt_{outcome}"
    run_id = stack.trigger(dag_id)
    try:
        pid = int(wait_for_line(stack, dag_id, run_id, 1, r"worker pid (\d+): waiting before deferring").group(1))
        job_id = xcom_job_id(stack, dag_id, run_id, "job")
        ended = {"success": "COMPLETED", "failure": "FAILED"}[outcome]
        stack.wait(lambda: job_state(job_id) == ended, 120, f"job {job_id} to end {ended}", interval_s=0.5)
        os.kill(pid, signal.SIGKILL)  # the worker dies after "Submitted", the job already over
        run = stack.wait_for_run_end(dag_id, run_id, 300)
        try2 = stack.task_log(dag_id, run_id, "job", 2)
        jobs = jobs_named(job_prefix(run_id))
        try3 = stack.task_log(dag_id, run_id, "job", 3) if outcome == "failure" else []
    finally:
        cancel_jobs_named(job_prefix(run_id))

    adopted = [line for line in try2 if f"Adopted Slurm job {job_id} " in line and "already ended" in line]
    streamed = Counter(line.strip() for line in try2 if line.strip().startswith("adopted line "))
    print(
        f"\n{dag_id}: worker of try 1 (pid {pid}) SIGKILLed after job {job_id} ended {ended}; "
        f"sacct: {[(job.job_id, job.state) for job in jobs]}; try 2 adopted it: {bool(adopted)}"
    )
    assert adopted, "\n".join(try2[-30:])
    assert streamed == Counter({f"adopted line {i}": 1 for i in range(1, 31)}), "\n".join(try2[-40:])
    assert run["state"] == "success"
    if outcome == "success":
        assert [(job.job_id, job.state) for job in jobs] == [(job_id, "COMPLETED")]
        assert stack.task_instance(dag_id, run_id, "job")["try_number"] == 2
    else:
        assert any(f"Slurm job {job_id} ended FAILED" in line for line in try2), "\n".join(try2[-20:])
        assert len(jobs) == 2 and jobs[0].job_id == job_id and jobs[0].state == "FAILED", jobs
        assert jobs[1].state == "COMPLETED"
        assert any(f"Submitted Slurm job {jobs[1].job_id} " in line for line in try3), "\n".join(try3[-20:])
