"""SgeOperator end to end against the test cluster's real Grid Engine (qmaster + execd), over real sshd.

The DAG scenarios share one ``airflow dags test`` run (tests/integration/dags/sge_scenarios.py):
each run starts a whole Airflow, so one run holds the failing, the h_rt and the verbatim task, and
the tests below read their parts of its output. The example DAG gets its own run, as users do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import sge
from airflow_hpc_provider.dialects.slurm import SubmitOutcome
from airflow_hpc_provider.hooks.sge import SgeHook, submit_job
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec
from airflow_hpc_provider.operators.sge import SgeJobTrigger
from tests.integration.conftest import EXAMPLE_DAGS, DagRunResult
from tests.integration.dags.sge_scenarios import NASTY_VALUES
from tests.integration.test_slurm_trigger import collected

pytestmark = pytest.mark.cluster

INJECTED = Path("/tmp/airflow-hpc-sge-injected")


_scenarios: dict[str, DagRunResult] = {}


@pytest.fixture
def scenarios(run_dag, sge_connection: str) -> DagRunResult:
    """The one run of the scenario DAG, shared by the tests that read it."""
    if "run" not in _scenarios:
        INJECTED.unlink(missing_ok=True)
        _scenarios["run"] = run_dag("sge_scenarios")
    return _scenarios["run"]


def task_part(result: DagRunResult, task_id: str) -> str:
    """The output of one task of the run (``dags test`` runs them one after the other)."""
    part = re.search(
        rf"\[DAG TEST\] starting task_id={task_id} .*?\[DAG TEST\] end task task_id={task_id} ", result.output, re.S
    )
    assert part, f"task {task_id} did not run to its end:\n{result.output[-3000:]}"
    return part.group(0)


def submitted_job_id(output: str) -> str:
    match = re.search(r"(?:Submitted|Adopted) SGE job (\d+) on sge_local", output)
    assert match, f"no submission line in the task log:\n{output[-3000:]}"
    return match.group(1)


def test_the_example_sge_dag_streams_its_output_and_succeeds(run_dag, sge_connection: str) -> None:
    result = run_dag("sge_hello", dags_folder=EXAMPLE_DAGS)
    assert result.succeeded, result.output[-4000:]
    job_id = submitted_job_id(result.output)
    assert re.search(rf"Hello from Grid Engine job {job_id} on \S+, queue all.q, 1 slot", result.output)
    for step in (1, 2, 3):
        assert result.output.count(f"step {step} of 3: values reach the job verbatim: $(not run) `nor this`") == 1
    assert f"Grid Engine job {job_id}: RUNNING (r)" in result.output  # seen while it ran, not only at the end
    assert f"SGE job {job_id} ended COMPLETED (exit 0:0)" in result.output, result.output[-3000:]
    assert "#$ -l h_vmem=256M" in result.output and "#$ -l h_rt=0:05:00" in result.output  # the logged script
    assert result.output.index("step 1 of 3") < result.output.index(f"SGE job {job_id} ended")


def test_a_failing_sge_job_fails_the_task_with_its_exit_code_and_last_lines(scenarios: DagRunResult) -> None:
    assert not scenarios.succeeded
    part = task_part(scenarios, "exit_3")
    job_id = submitted_job_id(part)
    assert f"JobFailedError: SGE job {job_id} ended FAILED (exit 3:0)" in part, part[-3000:]
    assert "last lines of the job's output:\nabout to fail" in part


def test_an_sge_job_past_its_h_rt_ends_timeout_and_never_passes_for_a_success(scenarios: DagRunResult) -> None:
    part = task_part(scenarios, "h_rt")
    job_id = submitted_job_id(part)
    assert "#$ -l h_rt=0:00:03" in part
    ended = f"JobFailedError: SGE job {job_id} ended TIMEOUT (killed by signal 9 (SIGKILL))"
    assert ended in part, part[-3000:]
    assert "reason: 37: qmaster enforced h_rt" in part  # what Grid Engine's accounting says
    assert "sleeping past h_rt" in part


def test_sge_env_values_and_job_name_arrive_verbatim_and_execute_nothing(scenarios: DagRunResult) -> None:
    part = task_part(scenarios, "verbatim")
    submitted_job_id(part)
    for name, value in NASTY_VALUES.items():
        assert f"{name}={base64.b64encode(value.encode()).decode()}" in part, name
    assert re.search(r"SGE job \d+ ended COMPLETED", part), part[-3000:]
    assert not INJECTED.exists(), "a value or the job name was executed by a shell"


# --- adoption and cancellation, through the hook and the trigger the operator defers to -----------


async def _submit(key: JobKey, command: str) -> SubmitOutcome:
    spec = JobSpec(command=command, job_name="sge-adoption")
    hook = SgeHook("sge_local")
    transport = SshTransport(hook.get_target())
    try:
        return await submit_job(
            transport, spec, sge.render_script(spec), key=key, log_dir=hook.defaults().log_dir, env={}
        )
    finally:
        await transport.close()


def _trigger(key: JobKey, job_id: str) -> SgeJobTrigger:
    log_dir = SgeHook("sge_local").defaults().log_dir
    return SgeJobTrigger(
        conn_id="sge_local",
        job_id=job_id,
        log_path=sge.log_path(log_dir, key, job_id),
        cursor_path=sge.cursor_path(log_dir, key, job_id),
        poll_interval=1,
        log_dir=log_dir,
    )


async def _fired(trigger: SgeJobTrigger, timeout_s: float = 120) -> dict:
    events: AsyncIterator = trigger.run()
    try:
        async with asyncio.timeout(timeout_s):
            return (await anext(events)).payload
    finally:
        await events.aclose()


@pytest.mark.asyncio
async def test_a_retry_adopts_the_live_sge_job_of_its_task_streams_all_its_output_and_never_submits_twice(
    sge_connection: str,
) -> None:
    run = uuid.uuid4().hex
    tag = f"sge-adopt-{run[:8]}"
    command = f'for i in $(seq 1 40); do echo "{tag} line $i"; sleep 0.1; done; exit 4'
    first = await _submit(JobKey.for_task_instance("sge_adoption", "job", run, -1, 1), command)
    assert not first.adopted and first.job_id

    retry_key = JobKey.for_task_instance("sge_adoption", "job", run, -1, 2)
    second = await _submit(retry_key, 'echo "this must never run"')
    assert (second.job_id, second.adopted) == (first.job_id, True)

    trigger = _trigger(retry_key, first.job_id)
    log = collected(trigger)
    payload = await _fired(trigger)
    assert payload["kind"] == "ended" and payload["status"]["state"] == "FAILED", payload
    assert payload["status"]["exit_code"] == 4
    streamed = [line for line in log.lines if line.startswith(f"{tag} line ")]
    assert streamed == [f"{tag} line {i}" for i in range(1, 41)]

    third = await _submit(JobKey.for_task_instance("sge_adoption", "job", run, -1, 3), "echo fresh")
    assert third.job_id != first.job_id and not third.adopted, "a watched job is never adopted again"


async def _accounted(job_id: str, timeout_s: float = 120) -> None:
    """Until Grid Engine's accounting has the job's end (qacct), asking over SSH as the worker would."""
    transport = SshTransport(SgeHook("sge_local").get_target())
    try:
        async with asyncio.timeout(timeout_s):
            while (
                await transport.run(f"qacct -j {int(job_id)} >/dev/null 2>&1 && echo ended\n")
            ).text.strip() != "ended":
                await asyncio.sleep(1)
    finally:
        await transport.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(("exit_code", "state"), [(0, "COMPLETED"), (3, "FAILED")])
async def test_an_sge_job_that_ended_while_its_worker_was_dead_decides_the_retry_and_is_not_run_again(
    sge_connection: str, exit_code: int, state: str
) -> None:
    run = uuid.uuid4().hex
    tag = f"sge-ended-{run[:8]}"
    command = f'for i in $(seq 1 40); do echo "{tag} line $i"; done; exit {exit_code}'
    first = await _submit(JobKey.for_task_instance("sge_adoption", "ended", run, -1, 1), command)
    assert not first.adopted and first.job_id
    await _accounted(first.job_id)  # try 1's worker died: nothing watched the job to its end

    retry_key = JobKey.for_task_instance("sge_adoption", "ended", run, -1, 2)
    second = await _submit(retry_key, 'echo "this must never run"')
    assert (second.job_id, second.adopted, second.ended, second.state) == (first.job_id, True, True, state)

    trigger = _trigger(retry_key, first.job_id)
    log = collected(trigger)
    payload = await _fired(trigger)
    assert payload["kind"] == "ended" and payload["status"]["state"] == state, payload
    assert payload["status"]["exit_code"] == exit_code
    streamed = [line for line in log.lines if line.startswith(f"{tag} line ")]
    assert streamed == [f"{tag} line {i}" for i in range(1, 41)]

    third = await _submit(JobKey.for_task_instance("sge_adoption", "ended", run, -1, 3), "echo fresh")
    assert third.job_id != first.job_id and not third.adopted, "an adopted outcome must be consumed once"


@pytest.mark.asyncio
async def test_stopping_a_deferred_sge_task_deletes_its_job_through_on_kill(sge_connection: str) -> None:
    key = JobKey.for_task_instance("sge_kill", "job", uuid.uuid4().hex, -1, 1)
    outcome = await _submit(key, 'echo "started"; sleep 300')
    assert outcome.job_id
    trigger = _trigger(key, outcome.job_id)
    log = collected(trigger)
    running = asyncio.create_task(anext(trigger.run()))
    async with asyncio.timeout(60):
        while "started" not in log.lines:
            await asyncio.sleep(0.2)
    running.cancel()  # what TriggerRunner does on a user action, before on_kill
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await trigger.on_kill()
    payload = await _fired(_trigger(key, outcome.job_id))  # a fresh watch sees how it ended
    assert payload["status"]["state"] == "CANCELLED", payload
