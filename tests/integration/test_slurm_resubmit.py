"""A Slurm job that outlives its time limit: signalled before it, checkpointed, requeued, resumed.

The job is rendered as ``SlurmSubmitOperator(signal_before_timeout=..., resubmit_on_timeout=2)``
renders it and watched by the trigger the operator defers to; the requeues are the job's own
(``scontrol requeue`` in its trap), so the task follows one job id through three runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from datetime import timedelta

import pytest

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.dialects.slurm_resubmit import SignalBeforeTimeout
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR, SlurmHook, submit_job
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec, Resources
from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
from tests.integration import cluster
from tests.integration.test_slurm_trigger import collected

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.asyncio]

# Steps until the USR1 handler saves the position and ends the run; the third run finishes from it.
CHECKPOINTING_JOB = """\
ck="$HOME/.airflow-hpc-test-checkpoint-{token}"
step=$(cat "$ck" 2>/dev/null || echo 0)
run=$(( ${{SLURM_RESTART_COUNT:-0}} + 1 ))
echo "run $run resumes after step $step"
trap 'echo "run $run checkpoint at step $step"; echo "$step" > "$ck"; exit 0' USR1
if [ "$run" -ge 3 ]; then last=$(( step + 5 )); else last=100000; fi
while [ "$step" -lt "$last" ]; do step=$(( step + 1 )); echo "run $run step $step"; sleep 0.5; done
rm -f "$ck"
echo "finished at step $step"
"""
STEP = re.compile(r"^run (\d) step (\d+)$")


async def _start_requeued_runs_now(job_id: str) -> None:
    """Slurm holds a requeued job about two minutes before it may start again; a user may say now.

    Not in the same second as the requeue, though: slurmd refuses a run whose credential is dated the
    second the previous run's was revoked ("Job credential revoked": the job ends FAILED, seen on CI
    with StartTime=now 0.8 s after the requeue), so each new run is released 3 s after it is seen.
    """
    released: set[str] = set()
    while True:
        state = await asyncio.to_thread(cluster.ssh, f"squeue -h -j {job_id} -O 'State:|,RestartCnt:|'", check=False)
        fields = [field.strip() for field in state.strip().split("|")]
        if len(fields) >= 2 and fields[0] == "PENDING" and fields[1] not in ("", "0") and fields[1] not in released:
            released.add(fields[1])
            await asyncio.sleep(3)
            await asyncio.to_thread(cluster.ssh, f"scontrol update jobid={job_id} StartTime=now", check=False)
        await asyncio.sleep(1)


async def test_a_two_minute_job_resubmitted_twice_checkpoints_on_usr1_runs_three_times_and_succeeds_with_each_line_once(
    slurm_connection: str,
) -> None:
    near_limit = SignalBeforeTimeout.parse("USR1@90", resubmits=2, on_signal=['echo "on_signal hook ran"'])
    token = uuid.uuid4().hex
    spec = JobSpec(
        command=CHECKPOINTING_JOB.format(token=token),
        job_name="resubmit-test",
        resources=Resources(time_limit=timedelta(minutes=2)),
    )
    key = JobKey.for_task_instance("resubmit", "job", uuid.uuid4().hex, -1, 1)
    transport = SshTransport(SlurmHook(slurm_connection).get_target())
    try:
        script = slurm.render_script(spec, near_limit=near_limit)
        outcome = await submit_job(transport, spec, script, key=key, log_dir=DEFAULT_LOG_DIR, env={})
    finally:
        await transport.close()
    assert outcome.job_id is not None
    job_id = outcome.job_id
    trigger = SlurmJobTrigger(
        conn_id=slurm_connection,
        job_id=job_id,
        log_path=slurm.log_path(DEFAULT_LOG_DIR, key, job_id),
        cursor_path=slurm.cursor_path(DEFAULT_LOG_DIR, key, job_id),
        poll_interval=2,
    )
    log = collected(trigger)
    events = trigger.run()
    hurry = asyncio.ensure_future(_start_requeued_runs_now(job_id))
    try:
        payload = (await asyncio.wait_for(anext(events), 420)).payload
    finally:
        hurry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hurry
        await events.aclose()
        cluster.ssh(f"scancel {job_id}; rm -f ~/.airflow-hpc-test-checkpoint-{token}", check=False)

    assert payload["kind"] == "ended" and payload["status"]["state"] == "COMPLETED", (payload, log.lines[-30:])
    lines = log.lines
    steps = [(int(m.group(1)), int(m.group(2))) for line in lines if (m := STEP.match(line))]
    # Three runs, each resuming where the previous one checkpointed, every step once and in order.
    assert [run for run, _ in steps] == sorted(run for run, _ in steps) and {run for run, _ in steps} == {1, 2, 3}
    assert [step for _, step in steps] == list(range(1, len(steps) + 1)), steps
    for run in (1, 2):
        last = max(step for r, step in steps if r == run)
        assert lines.count(f"run {run} checkpoint at step {last}") == 1
        assert lines.count(f"run {run + 1} resumes after step {last}") == 1
        assert lines.count(f"--- time limit near: USR1 in run {run} of job {job_id} ---") == 1
        assert lines.count(f"--- requeued before its time limit: run {run + 1} of at most 3 follows ---") == 1
        marker = f"--- run {run + 1} of job {job_id} (requeued) ---"
        assert lines.count(marker) == 1
        # The marker always comes before the new run's first line. It follows the old run's last
        # line only when a poll saw the job between runs; otherwise it stands where the new run was
        # first seen, and the old run's tail (printed after the last poll of that run) follows it.
        first_of_run = min(lines.index(f"run {run} step {step}") for r, step in steps if r == run)
        assert first_of_run < lines.index(marker) < lines.index(f"run {run + 1} resumes after step {last}")
    assert lines.count("on_signal hook ran") == 2
    assert lines.count(f"finished at step {steps[-1][1]}") == 1
    assert cluster.sacct_row(job_id, "JobIDRaw,State")[1] == "COMPLETED"
