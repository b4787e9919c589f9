"""Mapped task instances as Slurm array elements, driven as the triggerer drives their triggers.

Many SlurmArrayElementTriggers run on one event loop, as a triggerer runs the triggers of a mapped
task's instances: they must reach slurmctld as a handful of array submissions (counted by
slurmctld itself, ``sdiag``), each instance keeping its own element, output, outcome and cancel,
and a triggerer restart must adopt what was submitted, never submit it again. The test cluster's
``MaxArraySize`` is 6 (tests/cluster/up.sh), so twenty instances need four chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import uuid
from collections.abc import Sequence

import pytest

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR
from airflow_hpc_provider.jobs import JobKey, JobSpec
from airflow_hpc_provider.triggers.slurm_array import SlurmArrayElementTrigger
from airflow_hpc_provider.watching.arrays import ElementRequest, env_items
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup, request_to_dict
from tests.integration import cluster
from tests.integration.array_elements import NASTY, first_event, in_a_new_triggerer, numbered_lines, slurm_jobs_named
from tests.integration.test_slurm_trigger import collected

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]

MAX_ARRAY_SIZE = 6
LINES = 200
ELEMENT = re.compile(r"^(\d+)_(\d+)$")


def sdiag_submissions() -> int:
    """REQUEST_SUBMIT_BATCH_JOB as slurmctld counts it: one per sbatch, whatever the client believes."""
    match = re.search(r"REQUEST_SUBMIT_BATCH_JOB\s+\(\s*\d+\)\s+count:(\d+)", cluster.ssh("sdiag"))
    return int(match.group(1)) if match else 0


def array_name(run_id: str) -> str:
    """The job name of one test's arrays: how slurmctld's record tells them from everyone else's."""
    return f"array-test-{run_id[:12]}"


def element_triggers(
    conn_id: str,
    commands: Sequence[str],
    *,
    run_id: str,
    try_number: int = 1,
    map_indexes: Sequence[int] | None = None,
    env: dict[str, str] | None = None,
    window_s: float = 2.0,
    throttle: int | None = None,
) -> list[SlurmArrayElementTrigger]:
    """The triggers the mapped task's instances defer to, built as the operator builds them."""
    group = ClusterArrayGroup(
        conn_id=conn_id,
        head=slurm.render_script(JobSpec(command="", job_name=array_name(run_id))),
        job_name=array_name(run_id),
        log_dir=DEFAULT_LOG_DIR,
        window_s=window_s,
        throttle=throttle,
    )
    indexes = list(map_indexes if map_indexes is not None else range(len(commands)))
    triggers = []
    for map_index, command in zip(indexes, commands, strict=True):
        request = ElementRequest(
            group=group,
            key=JobKey.for_task_instance("array_tests", "mapped", run_id, map_index, try_number),
            command=command,
            map_index=map_index,
            env=env_items({"ELEMENT": f"element {map_index}", **(env or {})}),
            siblings=f"array_tests/{run_id}/mapped",
            expected=len(indexes),
        )
        triggers.append(SlurmArrayElementTrigger(conn_id=conn_id, element=request_to_dict(request), poll_interval=1))
    return triggers


async def test_twenty_mapped_instances_reach_slurmctld_as_four_array_submissions_each_with_its_own_output_and_exit(
    slurm_connection: str,
) -> None:
    run_id = uuid.uuid4().hex
    commands = [
        f'for i in $(seq 1 {LINES}); do echo "el{m} line $i"; done; printf "%s\\n" "$NASTY"; '
        'echo "own: $ELEMENT, carriers left: $(env | grep -c "^_AHE_")"; ' + ("exit 3" if m == 7 else "true")
        for m in range(20)
    ]
    triggers = element_triggers(slurm_connection, commands, run_id=run_id, env={"NASTY": NASTY})
    logs = [collected(trigger) for trigger in triggers]
    before = sdiag_submissions()

    payloads = await asyncio.wait_for(asyncio.gather(*(first_event(t) for t in triggers)), timeout=300)

    sbatch_calls = sdiag_submissions() - before
    submissions = len(slurm_jobs_named(array_name(run_id)))
    print(
        f"\n20 mapped instances, MaxArraySize {MAX_ARRAY_SIZE}: {submissions} array jobs in slurmctld's record "
        f"({sbatch_calls} sbatch calls by sdiag, every user of the shared cluster counted)"
    )
    assert submissions <= math.ceil(20 / MAX_ARRAY_SIZE) + 2
    assert sbatch_calls >= submissions
    job_ids = [payload["job_id"] for payload in payloads]
    assert all(ELEMENT.match(job_id) for job_id in job_ids), job_ids
    assert len(set(job_ids)) == 20
    assert len({job_id.split("_")[0] for job_id in job_ids}) == submissions
    assert all(int(job_id.split("_")[1]) < MAX_ARRAY_SIZE for job_id in job_ids)
    for m, (payload, log) in enumerate(zip(payloads, logs, strict=True)):
        assert payload["kind"] == "ended" and payload["array_element"] is True
        expected_state, expected_exit = ("FAILED", 3) if m == 7 else ("COMPLETED", 0)
        assert (payload["status"]["state"], payload["status"]["exit_code"]) == (expected_state, expected_exit), m
        assert numbered_lines(log, f"el{m}") == [f"el{m} line {i}" for i in range(1, LINES + 1)]
        others = [line for line in log.lines if re.match(r"^el\d+ line ", line) and not line.startswith(f"el{m} ")]
        assert others == [], f"map_index {m} got another element's output: {others[:3]}"
        assert NASTY.split("\n") == [line for line in log.lines if line in NASTY.split("\n")]
        assert f"own: element {m}, carriers left: 0" in log.lines
        assert any(
            re.fullmatch(
                rf"Submitted as Slurm array job {payload['job_id']} \(array \d+, index \d+ of chunk "
                rf"\d/\d, map_index {m}\) on {slurm_connection}",
                line,
            )
            for line in log.lines
        ), log.lines[:5]


async def test_a_user_stopping_one_instance_cancels_only_its_element(slurm_connection: str) -> None:
    triggers = element_triggers(
        slurm_connection, [f'echo "el{m} started"; sleep 8' for m in range(4)], run_id=uuid.uuid4().hex
    )
    logs = [collected(trigger) for trigger in triggers]
    running = [asyncio.create_task(first_event(trigger)) for trigger in triggers]
    await logs[3].wait_for("^el3 started$", timeout_s=120)

    running[3].cancel()  # the triggerer cancels the trigger, then calls on_kill (a user's action)
    with contextlib.suppress(asyncio.CancelledError):
        await running[3]
    await triggers[3].on_kill()

    payloads = await asyncio.wait_for(asyncio.gather(*running[:3]), timeout=120)
    assert [payload["status"]["state"] for payload in payloads] == ["COMPLETED"] * 3
    assert ELEMENT.match(triggers[3].job_id)
    assert await asyncio.to_thread(cluster.wait_for, triggers[3].job_id, {"CANCELLED"}, 30) == "CANCELLED"


async def test_a_restarted_triggerer_adopts_every_submitted_element_and_submits_nothing_again(
    slurm_connection: str,
) -> None:
    run_id = uuid.uuid4().hex
    commands = [f'for i in $(seq 1 40); do echo "el{m} line $i"; sleep 0.1; done' for m in range(5)]
    triggers = element_triggers(slurm_connection, commands, run_id=run_id)
    stored = [json.dumps(trigger.serialize()[1]) for trigger in triggers]  # what the database keeps
    first_logs = [collected(trigger) for trigger in triggers]
    running = [asyncio.create_task(first_event(trigger)) for trigger in triggers]
    for m, log in enumerate(first_logs):
        await log.wait_for(f"^el{m} line 3$", timeout_s=120)
    for task in running:  # a restart: the tasks are cancelled, on_kill is not called
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)

    # The new triggerer rebuilds each trigger from what the database stored at deferral: no job id.
    reborn = [SlurmArrayElementTrigger(**json.loads(kwargs)) for kwargs in stored]
    assert all(trigger.job_id == "" for trigger in reborn)
    second_logs = [collected(trigger) for trigger in reborn]
    payloads = await asyncio.to_thread(asyncio.run, in_a_new_triggerer(reborn))

    assert len(slurm_jobs_named(array_name(run_id))) == 1
    assert [payload["job_id"] for payload in payloads] == [trigger.job_id for trigger in triggers]
    for m, (first, second, payload) in enumerate(zip(first_logs, second_logs, payloads, strict=True)):
        assert payload["status"]["state"] == "COMPLETED"
        assert any(line.startswith(f"Adopted Slurm job {payload['job_id']}") for line in second.lines)
        streamed = numbered_lines(first, f"el{m}") + numbered_lines(second, f"el{m}")
        assert sorted(set(streamed), key=streamed.index) == [f"el{m} line {i}" for i in range(1, 41)]


async def test_a_trigger_stopped_while_its_siblings_gather_leaves_nothing_on_the_cluster(slurm_connection: str) -> None:
    run_id = uuid.uuid4().hex
    (trigger,) = element_triggers(slurm_connection, ["echo never"], run_id=run_id, window_s=30)
    trigger.element["expected"] = 5  # its siblings are still on their way: the window stays open
    running = asyncio.create_task(first_event(trigger))
    await asyncio.sleep(2)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await asyncio.sleep(1)
    assert slurm_jobs_named(array_name(run_id)) == set()
    assert trigger.job_id == ""


async def test_a_retry_of_one_failed_instance_submits_exactly_one_job(slurm_connection: str) -> None:
    run_id = uuid.uuid4().hex
    first = element_triggers(slurm_connection, [f"exit {3 if m == 2 else 0}" for m in range(3)], run_id=run_id)
    payloads = await asyncio.wait_for(asyncio.gather(*(first_event(t) for t in first)), timeout=120)
    assert [p["status"]["state"] for p in payloads] == ["COMPLETED", "COMPLETED", "FAILED"]

    before = slurm_jobs_named(array_name(run_id))
    (retry,) = element_triggers(slurm_connection, ["echo again"], run_id=run_id, try_number=2, map_indexes=[2])
    payload = await asyncio.wait_for(first_event(retry), timeout=120)

    assert len(slurm_jobs_named(array_name(run_id)) - before) == 1
    assert payload["status"]["state"] == "COMPLETED"
    assert payload["job_id"] != payloads[2]["job_id"]


async def test_an_array_throttle_keeps_at_most_that_many_elements_running_at_once(slurm_connection: str) -> None:
    run_id = uuid.uuid4().hex
    triggers = element_triggers(slurm_connection, ["sleep 4"] * 5, run_id=run_id, throttle=2)
    running = [asyncio.create_task(first_event(trigger)) for trigger in triggers]
    most = 0
    while not all(task.done() for task in running):
        array_ids = {trigger.job_id.split("_")[0] for trigger in triggers if trigger.job_id}
        if array_ids:
            states = cluster.ssh(f"squeue -h -r -t all -j {','.join(sorted(array_ids))} -o %T", check=False).split()
            most = max(most, states.count("RUNNING"))
        await asyncio.sleep(0.5)
    payloads = [task.result() for task in running]

    print(f"\n5 elements with array_throttle=2: at most {most} RUNNING at once")
    assert [payload["status"]["state"] for payload in payloads] == ["COMPLETED"] * 5
    assert most == 2
