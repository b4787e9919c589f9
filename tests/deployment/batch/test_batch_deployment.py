"""BatchRevisionOperator on a real Airflow deployment: the triggerer killed while CloudWatch lines flow.

The jobs are held RUNNING in moto; the test writes their CloudWatch lines itself, numbered, at a
steady rate, and SIGKILLs the triggerer while they flow. Every line must then be in the task log
(read through the REST API, which merges every source of the try's log), and a line may appear
twice only inside the span a replay mark announces (``--- replayed after a triggerer restart: the
next K lines may appear twice ---``), K at most one slice.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from airflow_hpc_provider.watching.batch import BatchPollerSettings
from tests.deployment.batch.conftest import BatchStack
from tests.deployment.conftest import xcom_job_id
from tests.deployment.dags.scenario_common import BATCH_QUIET_TASKS, BATCH_RESTART_TASKS
from tests.deployment.stack import AirflowStack
from tests.integration.batch.moto_batch import HeldJobs, MotoAws

pytestmark = [pytest.mark.deployment, pytest.mark.cluster, pytest.mark.slow]  # the shared stack brings the cluster up

MARK = re.compile(r"^--- replayed after a triggerer restart: the next (\d+) lines may appear twice ---$")
LINE = re.compile(r"^(job_\d+) line (\d+) of (\d+)$")
# A kill comes only once the live triggerer has added this many of job_0's lines to its task log.
STREAMING_PROOF_LINES = 20


@dataclass
class Writer:
    """Writes ``total`` numbered lines into one job's CloudWatch stream, ``per_second`` of them a second."""

    aws: MotoAws
    task_id: str
    stream: str
    total: int
    per_second: int
    batch_size: int
    written: int = 0
    failure: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"writer-{self.task_id}", daemon=True)

    def _run(self) -> None:
        try:
            started = time.monotonic()
            while self.written < self.total:
                count = min(self.batch_size, self.total - self.written)
                now = int(time.time() * 1000)
                lines = [(now, f"{self.task_id} line {self.written + i + 1} of {self.total}") for i in range(count)]
                self.aws.put_lines(self.stream, lines)
                self.written += count
                # Keep to the rate whatever the calls cost.
                time.sleep(max(0.0, started + self.written / self.per_second - time.monotonic()))
        except BaseException as error:  # reported by the test
            self.failure = error


def job_ids(stack: AirflowStack, dag_id: str, run_id: str, tasks: int) -> dict[str, str]:
    return {f"job_{i}": xcom_job_id(stack, dag_id, run_id, f"job_{i}", key="batch_job_id") for i in range(tasks)}


def numbered(log: list[str], task_id: str) -> Counter[int]:
    seen: Counter[int] = Counter()
    for line in log:
        match = LINE.match(line.strip())
        if match and match.group(1) == task_id:
            seen[int(match.group(2))] += 1
    return seen


def unannounced_repeats(log: list[str], task_id: str) -> tuple[list[int], list[int]]:
    """(lines repeated outside any marked span, the marks' K) for one task's log, in log order."""
    seen: set[int] = set()
    left = 0
    outside: list[int] = []
    marks: list[int] = []
    for raw in log:
        line = raw.strip()
        mark = MARK.match(line)
        if mark:
            left = int(mark.group(1))
            marks.append(left)
            continue
        match = LINE.match(line)
        if not match or match.group(1) != task_id:
            continue
        number = int(match.group(2))
        if number in seen and left == 0:
            outside.append(number)
        seen.add(number)
        left = max(0, left - 1)
    return outside, marks


def kill_and_restart(stack: AirflowStack) -> float:
    """SIGKILL the live triggerer (its whole process group), start another; seconds it took."""
    victim = next(t for t in stack.triggerers if t.alive())
    killed = time.monotonic()
    stack.kill(victim, signal.SIGKILL)
    time.sleep(2)
    stack.start_triggerer()
    return time.monotonic() - killed


def run_streaming(
    batch: BatchStack, dag_id: str, tasks: int, total: int, per_second: int, kills: int
) -> tuple[str, dict[str, list[str]], list[Writer]]:
    stack, aws = batch.stack, batch.aws
    run_id = stack.trigger(dag_id)
    ids = job_ids(stack, dag_id, run_id, tasks)
    stack.wait_for_states(dag_id, run_id, {"deferred"}, 180)
    writers = [
        Writer(aws, task_id, str(HeldJobs.job(job_id).log_stream_name), total, per_second, max(1, per_second // 2))
        for task_id, job_id in ids.items()
    ]
    for writer in writers:
        writer.thread.start()
    duration = total / per_second
    delivered = 0
    try:
        for kill in range(kills):
            # Mid-stream: a share of the lines written, and the live triggerer streaming them (its
            # lines in the task log grew since the last kill).
            stack.wait(
                lambda share=(kill + 1) / (kills + 1): min(w.written for w in writers) >= share * total,
                duration * 3 + 60,
                f"{(kill + 1) / (kills + 1):.0%} of the lines written",
                interval_s=0.2,
            )
            before = delivered
            delivered = stack.wait(
                lambda before=before: (
                    (n := sum(numbered(stack.task_log(dag_id, run_id, "job_0", 1), "job_0").values()))
                    > before + STREAMING_PROOF_LINES
                    and n
                ),
                180,
                "the live triggerer to stream job_0's lines",
            )
            took = kill_and_restart(stack)
            print(
                f"\n{dag_id}: triggerer SIGKILLed with {min(w.written for w in writers)} lines written, "
                f"{delivered} of job_0's in its log; restarted in {took:.1f}s"
            )
        for writer in writers:
            writer.thread.join(timeout=duration * 3 + 60)
            assert writer.failure is None and writer.written == total, (writer.task_id, writer.failure)
        # Every line read before the job ends: a job's end is read with its final lines anyway, but
        # the writers' last calls must have landed first.
        for job_id in ids.values():
            aws.held.finish(job_id, success=True, exit_code=0)
        run = stack.wait_for_run_end(dag_id, run_id, 300)
        assert run["state"] == "success", [(ti["task_id"], ti["state"]) for ti in stack.task_instances(dag_id, run_id)]
        logs = {task_id: stack.task_log(dag_id, run_id, task_id, 1) for task_id in ids}
    finally:
        for job_id in ids.values():
            if HeldJobs.job(job_id).status == "RUNNING":
                aws.held.finish(job_id, success=False, exit_code=1)
    return run_id, logs, writers


def test_a_triggerer_killed_twice_while_thousands_of_cloudwatch_lines_flow_loses_none(batch_stack: BatchStack) -> None:
    total, per_second = 3000, 100
    run_id, logs, _ = run_streaming(batch_stack, "dep_batch_restart", BATCH_RESTART_TASKS, total, per_second, kills=2)
    slice_lines = BatchPollerSettings().lines_per_slice
    report = {}
    for task_id, log in logs.items():
        seen = numbered(log, task_id)
        missing = [n for n in range(1, total + 1) if seen[n] == 0]
        repeated = sum(count - 1 for count in seen.values() if count > 1)
        outside, marks = unannounced_repeats(log, task_id)
        report[task_id] = (len(missing), repeated, marks)
        assert not missing, f"{task_id}: {len(missing)} lines missing, e.g. {missing[:10]}"
        assert not outside, f"{task_id}: lines repeated outside a replay mark: {outside[:10]}"
        assert len(marks) <= 2 and all(k <= slice_lines for k in marks), marks
        assert repeated <= sum(marks)
    print(f"\ndep_batch_restart {run_id}: task -> (missing, repeated, replay marks K): {report}")


def test_at_a_few_lines_a_second_a_killed_triggerer_loses_none_and_repeats_at_most_the_marked_slice(
    batch_stack: BatchStack,
) -> None:
    """At low volume a line repeats only if the kill lands between the supervisor writing it and the
    position being saved (about 0.1 s per poll here, see the docs): usually every line is once."""
    total, per_second = 40, 2
    run_id, logs, _ = run_streaming(batch_stack, "dep_batch_quiet", BATCH_QUIET_TASKS, total, per_second, kills=1)
    repeats = {}
    for task_id, log in logs.items():
        seen = numbered(log, task_id)
        outside, _ = unannounced_repeats(log, task_id)
        assert set(seen) == set(range(1, total + 1)), f"{task_id}: {sorted(seen.items())}"
        assert not outside, f"{task_id}: lines repeated outside a replay mark: {outside}"
        repeats[task_id] = sorted(n for n, count in seen.items() if count > 1)
        # A slice at this rate is one poll's lines: about poll_interval * per_second.
        assert len(repeats[task_id]) <= 2 * 2 * per_second, repeats
    print(f"\ndep_batch_quiet {run_id}: lines repeated (inside the replay mark) per task: {repeats}")
