"""Mapped task instances as Grid Engine array elements, driven as the triggerer drives their triggers.

Many SgeArrayElementTriggers run on one event loop, as a triggerer runs the triggers of a mapped
task's instances: they must reach Grid Engine as a handful of ``qsub -t`` arrays (counted by Grid
Engine itself: the distinct job numbers its accounting holds under the array's job name), each
instance keeping its own element ``<job>.<task>``, output, outcome and cancel, and a triggerer
restart must adopt what was submitted, never submit it again. The test cluster's ``max_aj_tasks``
is 6 (tests/cluster/gridengine.sh), so twenty instances need four arrays.
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

from airflow_hpc_provider.config import default_log_dir
from airflow_hpc_provider.dialects import remote_shell, sge
from airflow_hpc_provider.dialects.sge_status import parse_qacct
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobState
from airflow_hpc_provider.triggers.sge_array import SgeArrayElementTrigger
from airflow_hpc_provider.watching.arrays import ElementRequest, env_items
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup, request_to_dict
from airflow_hpc_provider.watching.sge_arrays import array_job_name
from tests.integration import cluster
from tests.integration.array_elements import first_event, in_a_new_triggerer, numbered_lines
from tests.integration.test_slurm_trigger import collected

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio]

MAX_ARRAY_SIZE = 6
LINES = 200
NASTY = 'it\'s "$(echo no)" `echo no` $HOME\\n\nsecond, line'
ELEMENT = re.compile(r"^(\d+)\.(\d+)$")
LOG_DIR = default_log_dir()


def grid(command: str, *, check: bool = True) -> str:
    """A command on the login node as Grid Engine's test user."""
    return cluster.ssh(command, check=check, user="sgeuser")


@pytest.fixture
def sge_arrays(sge_connection: str) -> str:
    """The connection, once Grid Engine is seen to cap arrays as the tests expect."""
    cap = grid("qconf -sconf | awk '$1 == \"max_aj_tasks\" { print $2 }'").strip()
    assert cap == str(MAX_ARRAY_SIZE), (
        f"max_aj_tasks is {cap}: bash tests/cluster/up.sh sets it to {MAX_ARRAY_SIZE} (an up.sh of a checkout older "
        "than Grid Engine arrays puts the default back)"
    )
    return sge_connection


def group_of(conn_id: str, run_id: str, *, window_s: float = 2.0, throttle: int | None = None) -> ClusterArrayGroup:
    # A job name of this run's own, so that accounting can be asked about this run's arrays alone.
    job_name = f"arr{run_id[:8]}"
    head = sge.render_script(JobSpec(command="", job_name=job_name))
    return ClusterArrayGroup(
        conn_id=conn_id, head=head, job_name=job_name, log_dir=LOG_DIR, window_s=window_s, throttle=throttle
    )


def element_triggers(
    conn_id: str,
    commands: Sequence[str],
    *,
    run_id: str,
    try_number: int = 1,
    map_indexes: Sequence[int] | None = None,
    env: dict[str, str] | None = None,
    throttle: int | None = None,
) -> list[SgeArrayElementTrigger]:
    """The triggers the mapped task's instances defer to, built as the operator builds them."""
    group = group_of(conn_id, run_id, throttle=throttle)
    indexes = list(map_indexes if map_indexes is not None else range(len(commands)))
    triggers = []
    for map_index, command in zip(indexes, commands, strict=True):
        request = ElementRequest(
            group=group,
            key=JobKey.for_task_instance("sge_array_tests", "mapped", run_id, map_index, try_number),
            command=command,
            map_index=map_index,
            env=env_items({"ELEMENT": f"element {map_index}", **(env or {})}),
            siblings=f"sge_array_tests/{run_id}/mapped",
            expected=len(indexes),
        )
        triggers.append(
            SgeArrayElementTrigger(conn_id=conn_id, element=request_to_dict(request), poll_interval=1, log_dir=LOG_DIR)
        )
    return triggers


def accounted(run_id: str) -> dict[str, dict[str, str]]:
    """Grid Engine's accounting of this run's arrays: one record per task that ran, by ``<job>.<task>``."""
    name = array_job_name(group_of("sge_local", run_id))
    records, _, _ = parse_qacct(grid(f"qacct -j {name}", check=False))
    return records


async def test_twenty_mapped_instances_are_four_grid_engine_arrays_each_element_with_its_own_output_and_exit(
    sge_arrays: str,
) -> None:
    run_id = uuid.uuid4().hex
    commands = [
        f'for i in $(seq 1 {LINES}); do echo "el{m} line $i"; done; printf "%s\\n" "$NASTY"; '
        'echo "own: $ELEMENT, carriers left: $(env | grep -c "^_AHE_")"; ' + ("exit 3" if m == 7 else "true")
        for m in range(20)
    ]
    triggers = element_triggers(sge_arrays, commands, run_id=run_id, env={"NASTY": NASTY})
    logs = [collected(trigger) for trigger in triggers]

    payloads = await asyncio.wait_for(asyncio.gather(*(first_event(t) for t in triggers)), timeout=300)

    records = accounted(run_id)
    arrays = {element.partition(".")[0] for element in records}
    print(f"\n20 mapped instances, max_aj_tasks {MAX_ARRAY_SIZE}: {len(arrays)} array jobs in Grid Engine's accounting")
    assert len(arrays) == math.ceil(20 / MAX_ARRAY_SIZE)
    job_ids = [payload["job_id"] for payload in payloads]
    assert all(ELEMENT.match(job_id) for job_id in job_ids), job_ids
    assert sorted(job_ids) == sorted(records)  # exactly one task ran per instance, no more
    for m, (payload, log) in enumerate(zip(payloads, logs, strict=True)):
        assert payload["kind"] == "ended" and payload["array_element"] is True
        expected_state, expected_exit = ("FAILED", 3) if m == 7 else ("COMPLETED", 0)
        assert (payload["status"]["state"], payload["status"]["exit_code"]) == (expected_state, expected_exit), m
        assert numbered_lines(log, f"el{m}") == [f"el{m} line {i}" for i in range(1, LINES + 1)]
        others = [line for line in log.lines if re.match(r"^el\d+ line ", line) and not line.startswith(f"el{m} ")]
        assert others == [], f"map_index {m} got another element's output: {others[:3]}"
        assert NASTY.split("\n") == [line for line in log.lines if line in NASTY.split("\n")]
        assert f"own: element {m}, carriers left: 0" in log.lines
        job, task = payload["job_id"].split(".")
        assert any(
            re.fullmatch(
                rf"Submitted as Grid Engine array job {job}\.{task} \(array {job}, index {task} of chunk "
                rf"\d/4, map_index {m}\) on {sge_arrays}",
                line,
            )
            for line in log.lines
        ), log.lines[:5]


def final_status(job_id: str) -> JobState | None:
    """What the provider's own poll says of an element now (None while it has not ended)."""
    token = remote_shell.random_token()
    dialect = sge.SgeDialect(LOG_DIR)
    output = grid(f"sh -s <<'EOS'\n{dialect.poll_script(token, [job_id], [])}EOS\n")
    report = dialect.read_poll(remote_shell.parse_framed(output.encode(), token).sections, [job_id])
    seen = report.observations[job_id]
    return seen.status.state if seen.final and seen.status else None


async def test_a_user_stopping_one_instance_deletes_only_its_task(sge_arrays: str) -> None:
    run_id = uuid.uuid4().hex
    triggers = element_triggers(sge_arrays, [f'echo "el{m} started"; sleep 8' for m in range(4)], run_id=run_id)
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
    async with asyncio.timeout(60):
        while (state := await asyncio.to_thread(final_status, triggers[3].job_id)) is None:
            await asyncio.sleep(1)
    assert state is JobState.CANCELLED
    assert records_failed(accounted(run_id)) == {triggers[3].job_id: "100"}  # killed: only that task


def records_failed(records: dict[str, dict[str, str]]) -> dict[str, str]:
    return {element: record["failed"].split()[0] for element, record in records.items() if record["failed"] != "0"}


async def test_a_restarted_triggerer_adopts_every_submitted_element_and_submits_nothing_again(sge_arrays: str) -> None:
    run_id = uuid.uuid4().hex
    commands = [f'for i in $(seq 1 40); do echo "el{m} line $i"; sleep 0.1; done' for m in range(5)]
    triggers = element_triggers(sge_arrays, commands, run_id=run_id)
    stored = [json.dumps(trigger.serialize()[1]) for trigger in triggers]  # what the database keeps
    first_logs = [collected(trigger) for trigger in triggers]
    running = [asyncio.create_task(first_event(trigger)) for trigger in triggers]
    for m, log in enumerate(first_logs):
        await log.wait_for(f"^el{m} line 3$", timeout_s=120)
    for task in running:  # a restart: the tasks are cancelled, on_kill is not called
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)

    # The new triggerer rebuilds each trigger from what the database stored at deferral: no job id.
    reborn = [SgeArrayElementTrigger(**json.loads(kwargs)) for kwargs in stored]
    assert all(trigger.job_id == "" for trigger in reborn)
    second_logs = [collected(trigger) for trigger in reborn]
    payloads = await asyncio.to_thread(asyncio.run, in_a_new_triggerer(reborn))

    assert [payload["job_id"] for payload in payloads] == [trigger.job_id for trigger in triggers]
    assert sorted(accounted(run_id)) == sorted(trigger.job_id for trigger in triggers)  # one array, 5 tasks
    for m, (first, second, payload) in enumerate(zip(first_logs, second_logs, payloads, strict=True)):
        assert payload["status"]["state"] == "COMPLETED"
        assert any(line.startswith(f"Adopted Grid Engine job {payload['job_id']}") for line in second.lines)
        streamed = numbered_lines(first, f"el{m}") + numbered_lines(second, f"el{m}")
        assert sorted(set(streamed), key=streamed.index) == [f"el{m} line {i}" for i in range(1, 41)]


async def test_a_retry_of_one_failed_instance_submits_exactly_one_job(sge_arrays: str) -> None:
    run_id = uuid.uuid4().hex
    first = element_triggers(sge_arrays, [f"exit {3 if m == 2 else 0}" for m in range(3)], run_id=run_id)
    payloads = await asyncio.wait_for(asyncio.gather(*(first_event(t) for t in first)), timeout=120)
    assert [p["status"]["state"] for p in payloads] == ["COMPLETED", "COMPLETED", "FAILED"]

    (retry,) = element_triggers(sge_arrays, ["echo again"], run_id=run_id, try_number=2, map_indexes=[2])
    payload = await asyncio.wait_for(first_event(retry), timeout=120)

    assert payload["status"]["state"] == "COMPLETED"
    records = accounted(run_id)
    assert sorted(records) == sorted([*(p["job_id"] for p in payloads), payload["job_id"]])
    assert len({element.partition(".")[0] for element in records}) == 2  # the array, then one job of one task


async def test_an_array_throttle_keeps_at_most_that_many_elements_running_at_once(sge_arrays: str) -> None:
    run_id = uuid.uuid4().hex
    triggers = element_triggers(sge_arrays, ["sleep 4"] * 5, run_id=run_id, throttle=2)
    running = [asyncio.create_task(first_event(trigger)) for trigger in triggers]
    most = 0
    while not all(task.done() for task in running):
        arrays = {trigger.job_id.split(".")[0] for trigger in triggers if trigger.job_id}
        if arrays:
            listing = await asyncio.to_thread(grid, "qstat -u sgeuser", check=False)
            states = [line.split()[4] for line in listing.splitlines()[2:] if line.split()[0] in arrays]
            most = max(most, states.count("r"))
        await asyncio.sleep(0.5)
    payloads = [task.result() for task in running]

    print(f"\n5 elements with array_throttle=2 (-tc 2): at most {most} running at once")
    assert [payload["status"]["state"] for payload in payloads] == ["COMPLETED"] * 5
    assert most == 2
