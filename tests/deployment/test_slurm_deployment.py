"""SlurmSubmitOperator (and PbsOperator) on a real Airflow deployment, driven through the REST API.

What ``airflow dags test`` cannot show: defer kwargs, the real triggerer, on_kill on user actions,
timeouts, triggerer crashes and hand-overs. Each test prints the figures it measured.
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from tests.deployment.conftest import cancel_jobs_named, job_state, jobs_named, xcom_job_id
from tests.deployment.dags.scenario_common import (
    LOG_LINES,
    RESTART_LINES,
    RESTART_TASKS,
    WORKER_SLOT_JOB_S,
    WORKER_SLOT_TASKS,
)
from tests.deployment.stack import AirflowStack, Component

pytestmark = [pytest.mark.deployment, pytest.mark.cluster, pytest.mark.slow]

CANCEL_WITHIN_S = 30.0
LINE = re.compile(r"^(\S+) line (\d+) of (\d+)$")
FINAL_STATE = re.compile(r"^Slurm job (\d+) ended COMPLETED \(exit 0:0\)")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def job_prefix(run_id: str) -> str:
    return f"airflow-dep-{run_id}-"


def numbered(lines: list[str], tag: str) -> Counter[int]:
    """How often each numbered line of the job tagged ``tag`` appears in a task log."""
    seen: Counter[int] = Counter()
    for line in lines:
        match = LINE.match(line.strip())
        if match and match.group(1) == tag:
            seen[int(match.group(2))] += 1
    return seen


def line_report(seen: Counter[int], expected: int) -> tuple[list[int], list[int]]:
    missing = [n for n in range(1, expected + 1) if seen[n] == 0]
    repeated = [n for n in range(1, expected + 1) if seen[n] > 1]
    return missing, repeated


def wait_cancelled(stack: AirflowStack, job_id: str, since: float) -> float:
    """Seconds from ``since`` until the job shows CANCELLED (fails after CANCEL_WITHIN_S)."""
    stack.wait(lambda: job_state(job_id) == "CANCELLED", CANCEL_WITHIN_S, f"job {job_id} CANCELLED", interval_s=0.5)
    return time.monotonic() - since


def wait_streaming(stack: AirflowStack, dag_id: str, run_id: str, task_id: str, tag: str, lines: int = 2) -> None:
    """Wait until the trigger has streamed ``lines`` lines of the job's output into the task log."""
    stack.wait(
        lambda: len(numbered(stack.task_log(dag_id, run_id, task_id, 1), tag)) >= lines,
        120,
        f"{dag_id}/{task_id} to stream {lines} lines",
        interval_s=1,
    )


def test_twenty_thirty_second_jobs_run_at_once_on_two_worker_slots(stack: AirflowStack) -> None:
    dag_id = "dep_worker_slots"
    run_id = stack.trigger(dag_id)
    most_deferred = 0
    most_running_tasks = 0
    try:
        while (run := stack.dag_run(dag_id, run_id))["state"] not in ("success", "failed"):
            states = Counter(ti["state"] for ti in stack.task_instances(dag_id, run_id))
            most_deferred = max(most_deferred, states["deferred"])
            most_running_tasks = max(most_running_tasks, states["running"])
            time.sleep(1)
            if parse_time(run["run_after"]) + 600 < time.time():
                raise AssertionError(f"{dag_id} still {run['state']} after 600s: {dict(states)}")
        tis = stack.task_instances(dag_id, run_id)
        jobs = jobs_named(job_prefix(run_id))
    finally:
        cancel_jobs_named(job_prefix(run_id))

    run_s = parse_time(run["end_date"]) - parse_time(run["start_date"])
    starts = [parse_time(job.start + "Z") for job in jobs if job.start not in ("Unknown", "None")]
    ends = [parse_time(job.end + "Z") for job in jobs if job.end not in ("Unknown", "None")]
    all_running_s = min(ends) - max(starts) if starts and ends else float("nan")
    # The most jobs running at one moment, from sacct's start and end times.
    edges = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends])
    running, peak_jobs = 0, 0
    for _, step in edges:
        running += step
        peak_jobs = max(peak_jobs, running)
    serial_s = WORKER_SLOT_TASKS / 2 * WORKER_SLOT_JOB_S
    print(
        f"\nworker slots: {WORKER_SLOT_TASKS} tasks x {WORKER_SLOT_JOB_S}s jobs, core.parallelism=2\n"
        f"  DAG run took {run_s:.1f}s (job time {WORKER_SLOT_JOB_S}s; holding a slot per job would take "
        f">= {serial_s:.0f}s: {serial_s / run_s:.1f}x longer)\n"
        f"  most tasks deferred at once: {most_deferred}; most tasks running (in a slot) at once: "
        f"{most_running_tasks}\n"
        f"  sacct: {len(jobs)} jobs; submissions spread over {max(starts) - min(starts):.1f}s; "
        f"at most {peak_jobs} ran at once (all {len(jobs)} at once for {all_running_s:.1f}s)"
    )
    assert run["state"] == "success", [(ti["task_id"], ti["state"]) for ti in tis]
    assert sorted(ti["state"] for ti in tis) == ["success"] * WORKER_SLOT_TASKS
    assert len(jobs) == WORKER_SLOT_TASKS, jobs
    assert {job.state for job in jobs} == {"COMPLETED"}
    assert most_running_tasks <= 2
    # Waiting tasks hold no slot: far more jobs ran at once than there are worker slots, and the run
    # took less than holding a slot per job would have. (Whether all 20 overlap depends on how fast
    # a loaded machine submits them, so it is reported, not asserted.)
    assert peak_jobs >= 3 * 2, f"at most {peak_jobs} jobs ran at once on 2 worker slots"
    assert run_s < serial_s, f"the run took {run_s:.0f}s, as long as holding a slot per job"


@pytest.mark.parametrize(
    ("dag_id", "xcom_key", "tag"),
    [("dep_mark_failed", "slurm_job_id", "mark_failed"), ("dep_pbs_mark_failed", "pbs_job_id", "pbs")],
    ids=["slurm", "pbs"],
)
def test_marking_a_deferred_task_failed_cancels_its_job_within_thirty_seconds(
    one_triggerer: AirflowStack, dag_id: str, xcom_key: str, tag: str
) -> None:
    stack = one_triggerer
    run_id = stack.trigger(dag_id)
    try:
        job_id = xcom_job_id(stack, dag_id, run_id, "job", xcom_key)
        stack.wait_for_states(dag_id, run_id, {"deferred"}, 120)
        wait_streaming(stack, dag_id, run_id, "job", tag)
        assert job_state(job_id) == "RUNNING"
        marked = time.monotonic()
        stack.set_task_state(dag_id, run_id, "job", "failed")
        took = wait_cancelled(stack, job_id, marked)
        print(f"\n{dag_id}: job {job_id} CANCELLED {took:.1f}s after the REST PATCH to failed")
        log = stack.task_log(dag_id, run_id, "job", 1)
        assert stack.task_instance(dag_id, run_id, "job")["state"] == "failed"
        assert any("task stopped by a user" in line for line in log), log[-10:]
    finally:
        cancel_jobs_named(job_prefix(run_id))


def test_clearing_a_deferred_task_cancels_its_job_within_thirty_seconds(one_triggerer: AirflowStack) -> None:
    stack = one_triggerer
    dag_id = "dep_clear"
    run_id = stack.trigger(dag_id)
    try:
        first = xcom_job_id(stack, dag_id, run_id, "job")
        stack.wait_for_states(dag_id, run_id, {"deferred"}, 120)
        wait_streaming(stack, dag_id, run_id, "job", "clear")
        cleared = time.monotonic()
        stack.clear_task(dag_id, run_id, "job")
        took = wait_cancelled(stack, first, cleared)
        # The cleared task runs again (try 2), queued before try 1's on_kill has cancelled the job:
        # it must submit a job of its own, not adopt the one being cancelled (a job a trigger
        # watched is never adopted; see WatchedJob.claimed_by_trigger).
        ti = stack.wait(
            lambda: (
                (ti := stack.task_instance(dag_id, run_id, "job"))["try_number"] == 2
                and ti["state"] in ("deferred", "failed", "success")
                and ti
            ),
            120,
            "try 2 to defer or end",
        )
        try2_log = stack.task_log(dag_id, run_id, "job", 2)
        adopted = any(f"Adopted Slurm job {first} " in line for line in try2_log)
        print(
            f"\n{dag_id}: job {first} CANCELLED {took:.1f}s after the REST clear; try 2 is {ti['state']}, "
            f"{'ADOPTED the cancelled job' if adopted else 'submitted a new job'}"
        )
        assert not adopted, f"try 2 adopted job {first}, which the clear was cancelling"
        assert ti["state"] in ("deferred", "success"), f"try 2 ended {ti['state']}"
        if ti["state"] == "deferred":
            stack.set_task_state(dag_id, run_id, "job", "failed")
    finally:
        cancel_jobs_named(job_prefix(run_id))


def test_an_execution_timeout_while_deferred_cancels_the_job(one_triggerer: AirflowStack) -> None:
    stack = one_triggerer
    dag_id = "dep_execution_timeout"
    run_id = stack.trigger(dag_id)
    try:
        job_id = xcom_job_id(stack, dag_id, run_id, "job")
        stack.wait_for_states(dag_id, run_id, {"deferred"}, 120)
        deferred = time.monotonic()
        tis = stack.wait_for_states(dag_id, run_id, {"failed", "success", "up_for_retry"}, 120)
        ended = time.monotonic()
        log = stack.task_log(dag_id, run_id, "job", 1)
        assert tis[0]["state"] == "failed", log[-15:]
        took = wait_cancelled(stack, job_id, ended)
        print(
            f"\n{dag_id}: execution_timeout=20s; task failed {ended - deferred:.1f}s after it deferred; "
            f"job {job_id} CANCELLED {took:.1f}s after that"
        )
        assert any("passed the task's time limit" in line for line in log), log[-15:]
    finally:
        cancel_jobs_named(job_prefix(run_id))


def test_the_task_log_read_through_the_rest_api_holds_the_streamed_output_and_the_final_state(
    one_triggerer: AirflowStack,
) -> None:
    stack = one_triggerer
    dag_id = "dep_task_log"
    run_id = stack.trigger(dag_id)
    try:
        run = stack.wait_for_run_end(dag_id, run_id, 180)
        log = stack.task_log(dag_id, run_id, "job", 1)
    finally:
        cancel_jobs_named(job_prefix(run_id))
    seen = numbered(log, "streamed")
    finals = [index for index, line in enumerate(log) if FINAL_STATE.match(line.strip())]
    last_output = max(index for index, line in enumerate(log) if LINE.match(line.strip()))
    print(f"\n{dag_id}: {len(log)} log lines, output lines seen {dict(seen)}, final state line at {finals}")
    assert run["state"] == "success"
    assert seen == Counter(dict.fromkeys(range(1, LOG_LINES + 1), 1)), "\n".join(log)
    assert len(finals) == 1 and finals[0] > last_output, "\n".join(log)


def alive_triggerer_jobs(stack: AirflowStack) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = stack.get("/api/v2/jobs", job_type="TriggererJob", is_alive="true", limit=100)["jobs"]
    return sorted(jobs, key=lambda job: job["start_date"])


def triggerer_of(stack: AirflowStack, dag_id: str, run_id: str) -> dict[str, int | None]:
    return {ti["task_id"]: (ti["trigger"] or {}).get("triggerer_id") for ti in stack.task_instances(dag_id, run_id)}


def check_jobs_and_lines(stack: AirflowStack, dag_id: str, run_id: str, tag: str) -> dict[str, tuple[int, int]]:
    """Every task succeeded, one COMPLETED job per task in sacct, each output line once in the log."""
    run = stack.wait_for_run_end(dag_id, run_id, 240)
    tis = stack.task_instances(dag_id, run_id)
    jobs = jobs_named(job_prefix(run_id))
    report: dict[str, tuple[list[int], list[int]]] = {}
    for index in range(RESTART_TASKS):
        task_id = f"job_{index}"
        report[task_id] = line_report(
            numbered(stack.task_log(dag_id, run_id, task_id, 1), f"{tag}-{index}"), RESTART_LINES
        )
    print(f"  sacct: {[(job.job_id, job.name.removeprefix(job_prefix(run_id)), job.state) for job in jobs]}")
    for task_id, (missing, repeated) in report.items():
        print(f"  {task_id}: lines missing from the task log {missing or 'none'}, repeated {repeated or 'none'}")
    assert run["state"] == "success", [(ti["task_id"], ti["state"]) for ti in tis]
    assert {ti["try_number"] for ti in tis} == {1}
    assert sorted(job.name for job in jobs) == sorted(f"{job_prefix(run_id)}job_{i}" for i in range(RESTART_TASKS))
    assert {job.state for job in jobs} == {"COMPLETED"}
    assert all(not missing and not repeated for missing, repeated in report.values()), report
    return {task_id: (len(missing), len(repeated)) for task_id, (missing, repeated) in report.items()}


def start_and_wait_streaming(stack: AirflowStack, dag_id: str, tag: str) -> str:
    run_id = stack.trigger(dag_id)
    stack.wait_for_states(dag_id, run_id, {"deferred"}, 180)
    for index in range(RESTART_TASKS):
        wait_streaming(stack, dag_id, run_id, f"job_{index}", f"{tag}-{index}", lines=5)
    return run_id


def test_a_triggerer_killed_mid_job_and_restarted_loses_no_job_and_repeats_no_line(
    one_triggerer: AirflowStack,
) -> None:
    stack = one_triggerer
    dag_id = "dep_restart"
    run_id = start_and_wait_streaming(stack, dag_id, "restart")
    try:
        victim = next(t for t in stack.triggerers if t.alive())
        before = triggerer_of(stack, dag_id, run_id)
        killed = time.monotonic()
        stack.kill(victim, signal.SIGKILL)
        time.sleep(3)
        stack.start_triggerer()
        stack.wait(
            lambda: not set(triggerer_of(stack, dag_id, run_id).values()) & (set(before.values()) | {None}),
            120,
            "the triggers to be picked up by the new triggerer",
        )
        picked_up = time.monotonic() - killed
        print(
            f"\n{dag_id}: triggerer pid {victim.pid} (job {set(before.values())}) SIGKILLed; "
            f"a new one took the triggers {picked_up:.1f}s later: {triggerer_of(stack, dag_id, run_id)}"
        )
        check_jobs_and_lines(stack, dag_id, run_id, "restart")
    finally:
        cancel_jobs_named(job_prefix(run_id))


def start_on_two_triggerers(stack: AirflowStack, dag_id: str, tag: str) -> str:
    """A second triggerer beside the stack's, then the DAG's jobs streaming (spread over both)."""
    stack.start_triggerer()
    stack.wait(lambda: len(alive_triggerer_jobs(stack)) == 2, 90, "two live triggerers")
    return start_and_wait_streaming(stack, dag_id, tag)


def busiest_triggerer(stack: AirflowStack, placement: dict[str, int | None]) -> tuple[int | None, Component]:
    """The triggerer job holding most of the run's triggers, and its process."""
    live: list[Component] = sorted((t for t in stack.triggerers if t.alive()), key=lambda t: t.started_at)
    jobs_by_start = [job["id"] for job in alive_triggerer_jobs(stack)]
    holding = Counter(placement.values()).most_common(1)[0][0]
    return holding, live[jobs_by_start.index(holding)]


def test_two_triggerers_hand_over_triggers_without_cancelling_or_repeating(one_triggerer: AirflowStack) -> None:
    stack = one_triggerer
    dag_id = "dep_ha"
    run_id = start_on_two_triggerers(stack, dag_id, "ha")
    try:
        before = triggerer_of(stack, dag_id, run_id)
        jobs_by_start = [job["id"] for job in alive_triggerer_jobs(stack)]
        holding, leaving = busiest_triggerer(stack, before)
        stopped = time.monotonic()
        stack.kill(leaving, signal.SIGTERM)  # a graceful stop, as in a rolling deployment
        stack.wait(
            lambda: set(triggerer_of(stack, dag_id, run_id).values()) - {None, holding},
            120,
            "the triggers to move to the other triggerer",
        )
        after = triggerer_of(stack, dag_id, run_id)
        print(
            f"\n{dag_id}: triggerer jobs {jobs_by_start}; triggers on {before}; job {holding} (pid {leaving.pid}) "
            f"stopped with SIGTERM; {time.monotonic() - stopped:.1f}s later they are on {after}"
        )
        check_jobs_and_lines(stack, dag_id, run_id, "ha")
    finally:
        cancel_jobs_named(job_prefix(run_id))


def test_a_triggerer_frozen_past_the_health_check_then_resumed_stops_none_of_the_jobs_it_lost(
    one_triggerer: AirflowStack,
) -> None:
    """Airflow's triggerer calls on_kill, as for a user's action, on every trigger it runs but no
    longer has assigned: a triggerer that missed its heartbeats (frozen here with SIGSTOP, in life a
    loaded machine or a slow database) finds its triggers on another one when it resumes. The jobs
    must run on, watched by the other triggerer, and every task succeed."""
    stack = one_triggerer
    dag_id = "dep_frozen"
    run_id = start_on_two_triggerers(stack, dag_id, "frozen")
    try:
        before = triggerer_of(stack, dag_id, run_id)
        holding, frozen = busiest_triggerer(stack, before)
        stopped = time.monotonic()
        frozen.signal_group(signal.SIGSTOP)
        try:
            stack.wait(
                lambda: holding not in triggerer_of(stack, dag_id, run_id).values(),
                120,
                "the frozen triggerer's triggers to move to the other one",
            )
            moved = time.monotonic() - stopped
        finally:
            frozen.signal_group(signal.SIGCONT)
        after = triggerer_of(stack, dag_id, run_id)
        lost = sorted(task for task, triggerer in before.items() if triggerer == holding)
        print(
            f"\n{dag_id}: triggerer job {holding} (pid {frozen.pid}) frozen with SIGSTOP; its triggers {lost} "
            f"were on {after} {moved:.1f}s later; then it resumed (SIGCONT)"
        )
        check_jobs_and_lines(stack, dag_id, run_id, "frozen")
        # The resumed triggerer was asked to kill the triggers it lost, and left their jobs alone.
        left = [
            task
            for task in lost
            if any(
                "left running" in line and "another triggerer took this trigger over" in line
                for line in trigger_log_lines(stack, dag_id, run_id, task, holding)
            )
        ]
        assert left == lost, f"the resumed triggerer did not say it left the jobs of {sorted(set(lost) - set(left))}"
    finally:
        frozen_ones = [t for t in stack.triggerers if t.alive()]
        for component in frozen_ones:
            component.signal_group(signal.SIGCONT)
        cancel_jobs_named(job_prefix(run_id))


def trigger_log_lines(
    stack: AirflowStack, dag_id: str, run_id: str, task_id: str, triggerer_job: int | None
) -> list[str]:
    """What one triggerer wrote into the task's try-1 trigger log (its own file beside the task log)."""
    folder = stack.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    lines: list[str] = []
    for path in folder.glob(f"attempt=1.log.trigger.{triggerer_job}.log"):
        lines.extend(path.read_text(errors="replace").splitlines())
    return lines
