"""Mapped task instances as PBS array elements, on the Torque-compatible wrappers around Slurm,
driven as the triggerer drives their triggers.

Many PbsArrayElementTriggers run on one event loop, as a triggerer runs the triggers of a mapped
task's instances: they must reach the cluster as a handful of ``qsub -t`` submissions (each is one
sbatch behind the wrapper, counted by slurmctld itself: ``sdiag``), each instance keeping its own
element, output, outcome and cancel, and a triggerer restart must adopt what was submitted, never
submit it again. The cluster's largest array is Slurm's ``MaxArraySize``, 6 (tests/cluster/up.sh),
so twenty instances need four chunks.
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

from airflow_hpc_provider.dialects import pbs
from airflow_hpc_provider.dialects.pbs_exits import exit_dir
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.hooks.pbs import DEFAULT_LOG_DIR
from airflow_hpc_provider.jobs import JobKey, JobSpec
from airflow_hpc_provider.triggers.pbs_array import PbsArrayElementTrigger
from airflow_hpc_provider.watching.arrays import ElementRequest, env_items
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup, request_from_dict, request_to_dict
from tests.integration import cluster
from tests.integration.array_elements import NASTY, first_event, in_a_new_triggerer, numbered_lines, slurm_jobs_named
from tests.integration.test_slurm_arrays import LINES, MAX_ARRAY_SIZE, sdiag_submissions
from tests.integration.test_slurm_trigger import collected

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]

# The wrappers print a bare array id; an element is <array>[<index>] (watched through Slurm).
ELEMENT = re.compile(r"^(\d+)\[(\d+)\]$")


@pytest.fixture
def pbs_connection(cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_PBS_LOCAL", cluster_env["AIRFLOW_CONN_PBS_LOCAL"])
    return "pbs_local"


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
) -> list[PbsArrayElementTrigger]:
    """The triggers the mapped task's instances defer to, built as PbsOperator builds them."""
    # The run id in the name: slurmctld's record of this test's arrays is found by it.
    spec = JobSpec(command="", job_name=f"pbs-array-{run_id[:8]}")
    group = ClusterArrayGroup(
        conn_id=conn_id,
        head=pbs.render_script(spec, PbsFlavour.TORQUE, exit_dir=exit_dir(DEFAULT_LOG_DIR)),
        job_name=spec.job_name,
        log_dir=DEFAULT_LOG_DIR,
        window_s=window_s,
        throttle=throttle,
    )
    indexes = list(map_indexes if map_indexes is not None else range(len(commands)))
    triggers = []
    for map_index, command in zip(indexes, commands, strict=True):
        request = ElementRequest(
            group=group,
            key=JobKey.for_task_instance("pbs_array_tests", "mapped", run_id, map_index, try_number),
            command=command,
            map_index=map_index,
            env=env_items({"ELEMENT": f"element {map_index}", **(env or {})}),
            siblings=f"pbs_array_tests/{run_id}/mapped",
            expected=len(indexes),
        )
        triggers.append(
            PbsArrayElementTrigger(
                conn_id=conn_id,
                element=request_to_dict(request),
                poll_interval=1,
                flavour="torque",
                log_dir=DEFAULT_LOG_DIR,
            )
        )
    return triggers


def arrays_submitted(triggers: Sequence[PbsArrayElementTrigger]) -> set[str]:
    """The arrays slurmctld holds under these triggers' job name (the wrappers' qsub is sbatch)."""
    group = request_from_dict(triggers[0].conn_id, triggers[0].element).group
    return slurm_jobs_named(f"{pbs.name_base(group.job_name)}-{group.digest[:12]}")


def slurm_name(job_id: str) -> str:
    match = ELEMENT.match(job_id)
    assert match, job_id
    return f"{match.group(1)}_{match.group(2)}"


async def test_twenty_mapped_instances_reach_the_cluster_as_four_qsub_arrays_each_with_its_own_output_and_exit(
    pbs_connection: str,
) -> None:
    run_id = uuid.uuid4().hex
    commands = [
        f'for i in $(seq 1 {LINES}); do echo "el{m} line $i"; done; printf "%s\\n" "$NASTY"; '
        'echo "own: $ELEMENT, carriers left: $(env | grep -c "^_AHE_"), id: $PBS_JOBID"; '
        + ("exit 3" if m == 7 else "true")
        for m in range(20)
    ]
    triggers = element_triggers(pbs_connection, commands, run_id=run_id, env={"NASTY": NASTY})
    logs = [collected(trigger) for trigger in triggers]
    before = sdiag_submissions()

    payloads = await asyncio.wait_for(asyncio.gather(*(first_event(t) for t in triggers)), timeout=300)

    sbatch_calls = sdiag_submissions() - before
    submissions = len(arrays_submitted(triggers))
    print(
        f"\n20 mapped PBS instances, largest array {MAX_ARRAY_SIZE}: {submissions} qsub -t arrays in slurmctld's "
        f"record ({sbatch_calls} sbatch calls by sdiag, every user of the shared cluster counted)"
    )
    assert submissions <= math.ceil(20 / MAX_ARRAY_SIZE) + 2
    assert sbatch_calls >= submissions
    job_ids = [payload["job_id"] for payload in payloads]
    assert all(ELEMENT.match(job_id) for job_id in job_ids), job_ids
    assert len(set(job_ids)) == 20
    assert len({job_id.split("[")[0] for job_id in job_ids}) == submissions
    for m, (payload, log) in enumerate(zip(payloads, logs, strict=True)):
        assert payload["kind"] == "ended" and payload["array_element"] is True
        expected_state, expected_exit = ("FAILED", 3) if m == 7 else ("COMPLETED", 0)
        assert (payload["status"]["state"], payload["status"]["exit_code"]) == (expected_state, expected_exit), m
        assert numbered_lines(log, f"el{m}") == [f"el{m} line {i}" for i in range(1, LINES + 1)]
        others = [line for line in log.lines if re.match(r"^el\d+ line ", line) and not line.startswith(f"el{m} ")]
        assert others == [], f"map_index {m} got another element's output: {others[:3]}"
        assert NASTY.split("\n") == [line for line in log.lines if line in NASTY.split("\n")]
        assert f"own: element {m}, carriers left: 0, id: {payload['job_id']}" in log.lines
        assert any(
            re.fullmatch(
                rf"Submitted as PBS array job {re.escape(payload['job_id'])} \(array \d+, index \d+ of chunk "
                rf"\d/\d, map_index {m}\) on {pbs_connection}",
                line,
            )
            for line in log.lines
        ), log.lines[:5]
    # The scheduler agrees: only map_index 7's element failed, with its exit status.
    states = {m: cluster.sacct_row(slurm_name(job_ids[m])) for m in (6, 7)}
    assert states[7][1] == "FAILED" and states[6][1] == "COMPLETED", states


async def test_a_user_stopping_one_pbs_instance_cancels_only_its_element(pbs_connection: str) -> None:
    triggers = element_triggers(
        pbs_connection, [f'echo "el{m} started"; sleep 8' for m in range(4)], run_id=uuid.uuid4().hex
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
    name = slurm_name(triggers[3].job_id)
    assert await asyncio.to_thread(cluster.wait_for, name, {"CANCELLED"}, 30) == "CANCELLED"


async def test_a_restarted_triggerer_adopts_every_submitted_pbs_element_and_submits_nothing_again(
    pbs_connection: str,
) -> None:
    run_id = uuid.uuid4().hex
    commands = [f'for i in $(seq 1 40); do echo "el{m} line $i"; sleep 0.1; done' for m in range(5)]
    triggers = element_triggers(pbs_connection, commands, run_id=run_id)
    stored = [json.dumps(trigger.serialize()[1]) for trigger in triggers]  # what the database keeps
    first_logs = [collected(trigger) for trigger in triggers]
    before = sdiag_submissions()
    running = [asyncio.create_task(first_event(trigger)) for trigger in triggers]
    for m, log in enumerate(first_logs):
        await log.wait_for(f"^el{m} line 3$", timeout_s=120)
    for task in running:  # a restart: the tasks are cancelled, on_kill is not called
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)

    # The new triggerer rebuilds each trigger from what the database stored at deferral: no job id.
    reborn = [PbsArrayElementTrigger(**json.loads(kwargs)) for kwargs in stored]
    assert all(trigger.job_id == "" for trigger in reborn)
    second_logs = [collected(trigger) for trigger in reborn]
    payloads = await asyncio.to_thread(asyncio.run, in_a_new_triggerer(reborn))

    assert len(arrays_submitted(triggers)) == 1
    assert sdiag_submissions() - before >= 1
    assert [payload["job_id"] for payload in payloads] == [trigger.job_id for trigger in triggers]
    for m, (first, second, payload) in enumerate(zip(first_logs, second_logs, payloads, strict=True)):
        assert payload["status"]["state"] == "COMPLETED"
        assert any(line.startswith(f"Adopted PBS job {payload['job_id']}") for line in second.lines)
        streamed = numbered_lines(first, f"el{m}") + numbered_lines(second, f"el{m}")
        assert sorted(set(streamed), key=streamed.index) == [f"el{m} line {i}" for i in range(1, 41)]


async def test_a_retry_of_one_failed_pbs_instance_submits_exactly_one_job(pbs_connection: str) -> None:
    run_id = uuid.uuid4().hex
    first = element_triggers(pbs_connection, [f"exit {3 if m == 2 else 0}" for m in range(3)], run_id=run_id)
    payloads = await asyncio.wait_for(asyncio.gather(*(first_event(t) for t in first)), timeout=120)
    assert [p["status"]["state"] for p in payloads] == ["COMPLETED", "COMPLETED", "FAILED"]

    before = sdiag_submissions()
    (retry,) = element_triggers(pbs_connection, ["echo again"], run_id=run_id, try_number=2, map_indexes=[2])
    payload = await asyncio.wait_for(first_event(retry), timeout=120)

    assert len(arrays_submitted(first)) == 2  # the first try's array, and one for the retry
    assert sdiag_submissions() - before >= 1
    assert payload["status"]["state"] == "COMPLETED"
    assert payload["job_id"] != payloads[2]["job_id"]


async def test_a_pbs_array_throttle_keeps_at_most_that_many_elements_running_at_once(pbs_connection: str) -> None:
    triggers = element_triggers(pbs_connection, ["sleep 4"] * 5, run_id=uuid.uuid4().hex, throttle=2)
    running = [asyncio.create_task(first_event(trigger)) for trigger in triggers]
    most = 0
    while not all(task.done() for task in running):
        array_ids = {trigger.job_id.split("[")[0] for trigger in triggers if trigger.job_id}
        if array_ids:
            states = cluster.ssh(f"squeue -h -r -t all -j {','.join(sorted(array_ids))} -o %T", check=False).split()
            most = max(most, states.count("RUNNING"))
        await asyncio.sleep(0.5)
    payloads = [task.result() for task in running]

    print(f"\n5 PBS elements with array_throttle=2 (qsub -t 0-4%2): at most {most} RUNNING at once")
    assert [payload["status"]["state"] for payload in payloads] == ["COMPLETED"] * 5
    assert most == 2
