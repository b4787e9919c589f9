"""How every backend's summary says a job ended: signals by name, and only reasons that belong to
the final state.

One function (``jobs.describe_exit``) words the end for all of them; each dialect decides what its
scheduler's numbers mean (Slurm's ``code:signal``, PBS's ``256 + N``, a shell's or Docker's
``128 + N``).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import pbs_exits, pbs_qstat, slurm_status, slurm_tenant, slurm_tenant_poll
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.jobs import (
    JobState,
    JobStatus,
    describe_exit,
    signal_name,
    signal_of_shell_status,
)
from airflow_hpc_provider.operators.batch import BatchRevisionOperator
from airflow_hpc_provider.operators.ec2 import Ec2EphemeralOperator
from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.operators.sge import SgeOperator
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator
from airflow_hpc_provider.operators.slurm_tenant import SlurmTenantOperator

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.mark.parametrize(
    ("exit_code", "signal", "words"),
    [
        (0, 9, "killed by signal 9 (SIGKILL)"),
        (143, 15, "killed by signal 15 (SIGTERM)"),
        (0, 11, "killed by signal 11 (SIGSEGV)"),
        (0, 36, "killed by signal 36 (SIGRTMIN+2)"),
        (3, 0, "exit 3:0"),
        (0, 125, "exit 0:125"),  # sacct's OUT_OF_MEMORY: 125 is no signal
        (3, None, "exit 3"),
        (None, None, "exit unknown"),
        (None, 0, "exit unknown"),
    ],
)
def test_an_end_is_worded_the_same_for_every_backend(exit_code: int | None, signal: int | None, words: str) -> None:
    assert describe_exit(exit_code, signal) == words


def test_signal_names_are_linuxs_whatever_the_host_running_airflow() -> None:
    assert [signal_name(n) for n in (1, 2, 9, 10, 15, 30)] == [
        "SIGHUP",
        "SIGINT",
        "SIGKILL",
        "SIGUSR1",
        "SIGTERM",
        "SIGPWR",
    ]


@pytest.mark.parametrize(
    ("code", "signal"), [(128, None), (129, 1), (137, 9), (143, 15), (159, 31), (160, None), (3, None)]
)
def test_a_shell_status_above_128_names_a_signal_up_to_31(code: int, signal: int | None) -> None:
    assert signal_of_shell_status(code) == signal


# --- every backend's summary -------------------------------------------------------------------


def test_slurm_names_the_signal_sacct_recorded() -> None:
    (status,) = slurm_status.parse_sacct("9|FAILED|0:9|None|00:00:01|vm|\n").values()
    summary = SlurmSubmitOperator(task_id="t", command="true").summary(status)
    assert summary == "Slurm job 9 ended FAILED (killed by signal 9 (SIGKILL)) after 00:00:01, on vm"


def test_slurm_keeps_code_and_signal_when_no_signal_ended_the_job() -> None:
    records = slurm_status.parse_sacct((FIXTURES / "slurm" / "sacct_mixed.txt").read_text())
    op = SlurmSubmitOperator(task_id="t", command="true")
    assert "ended FAILED (exit 3:0)" in op.summary(records["5"])
    assert "ended OUT_OF_MEMORY (exit 0:125)" in op.summary(records["6"])


def test_pbs_names_the_signal_of_an_exit_status_above_256() -> None:
    status = pbs_qstat.status_from_attributes("5.srv", {"job_state": "F", "Exit_status": "265"}, PbsFlavour.PBS_PRO)
    assert (
        PbsOperator(task_id="t", command="true").summary(status)
        == "PBS job 5.srv ended FAILED (F) (killed by signal 9 (SIGKILL))"
    )


def test_pbs_names_the_signal_its_script_recorded() -> None:
    finished = JobStatus(job_id="7", state=JobState.FAILED, native_state="C")
    status = pbs_exits.with_recorded_exit(finished, pbs_exits.RecordedExit.parse("137"))
    assert "ended FAILED (C) (killed by signal 9 (SIGKILL))" in PbsOperator(task_id="t", command="true").summary(status)
    plain = pbs_exits.with_recorded_exit(finished, pbs_exits.RecordedExit.parse("3"))
    assert "ended FAILED (C) (exit 3:0)" in PbsOperator(task_id="t", command="true").summary(plain)


def tenant_summary(status: JobStatus) -> str:
    return SlurmTenantOperator(task_id="t", reservation="pool", command="true").summary(status)


def batch_summary(status: JobStatus) -> str:
    return BatchRevisionOperator(task_id="t", command="true", image="alpine:3").summary(status)


def test_a_tenant_names_the_signal_its_shell_reported() -> None:
    ref = slurm_tenant.TenantRef.parse("12:abc:1")
    seen = slurm_tenant_poll.observe_tenant(ref, "12:abc:1", "137 exited", None)
    assert seen.status is not None
    assert tenant_summary(seen.status) == "Slurm tenant 12:abc:1 ended FAILED (killed by signal 9 (SIGKILL))"
    failed = slurm_tenant_poll.observe_tenant(ref, "12:abc:1", "3 exited", None)
    assert (
        failed.status is not None and tenant_summary(failed.status) == "Slurm tenant 12:abc:1 ended FAILED (exit 3:0)"
    )


def test_batch_names_a_containers_128_plus_n_as_a_signal() -> None:
    status = JobStatus(
        job_id="1f2e", state=JobState.FAILED, native_state="FAILED", exit_code=137, reason="OutOfMemoryError"
    )
    assert batch_summary(status).startswith("AWS Batch job 1f2e ended FAILED (killed by signal 9 (SIGKILL))")
    plain = JobStatus(job_id="1f2e", state=JobState.FAILED, native_state="FAILED", exit_code=3)
    assert batch_summary(plain) == "AWS Batch job 1f2e ended FAILED (exit 3)"


def test_ec2_names_a_containers_128_plus_n_as_a_signal() -> None:
    op = Ec2EphemeralOperator(task_id="t", image="alpine:3", command="true", time_limit=timedelta(minutes=5))
    killed = JobStatus(job_id="i-1", state=JobState.FAILED, native_state="FAILED", exit_code=139)
    assert op.summary(killed) == "EC2 instance i-1: the container ended FAILED (killed by signal 11 (SIGSEGV))"
    assert "ended FAILED (exit 3)" in op.summary(
        JobStatus(job_id="i-1", state=JobState.FAILED, native_state="FAILED", exit_code=3)
    )


# --- reasons that belong to the final state ------------------------------------------------------


def test_a_held_then_released_job_has_no_reason_once_completed() -> None:
    (status,) = slurm_status.parse_sacct((FIXTURES / "slurm" / "sacct_held_then_released.txt").read_text()).values()
    assert status.state is JobState.COMPLETED and status.reason is None
    summary = SlurmSubmitOperator(task_id="t", command="true").summary(status)
    assert summary == "Slurm job 35 ended COMPLETED (exit 0:0) after 00:00:02, on vm"


@pytest.mark.parametrize(
    ("state", "reason", "kept"),
    [
        (JobState.PENDING, "Resources", "Resources"),
        (JobState.HELD, "JobHeldUser", "JobHeldUser"),
        (JobState.RUNNING, "JobHeldUser", None),
        (JobState.COMPLETED, "JobHeldUser", None),
        (JobState.COMPLETED, "NonZeroExitCode", None),
        (JobState.FAILED, "NonZeroExitCode", "NonZeroExitCode"),
        (JobState.FAILED, "Priority", None),
        (JobState.COMPLETING, "TimeLimit", "TimeLimit"),
        (JobState.CANCELLED, "JobHeldUser", None),
        (JobState.PENDING, "None", None),
    ],
)
def test_a_slurm_reason_is_kept_only_with_the_state_it_explains(state: JobState, reason: str, kept: str | None) -> None:
    assert slurm_status.reason_for(state, reason) == kept


def test_squeue_keeps_a_waiting_reason_and_an_ending_one() -> None:
    statuses = slurm_status.parse_squeue((FIXTURES / "slurm" / "squeue_mixed.txt").read_text())
    assert statuses["3"].reason == "JobHeldUser"
    assert statuses["5"].reason == "NonZeroExitCode"
    assert statuses["4"].reason is None


def test_a_completed_pbs_job_carries_no_comment_from_its_wait() -> None:
    attributes = {
        "job_state": "F",
        "Exit_status": "0",
        "comment": "Not Running: Insufficient amount of resource: ncpus",
    }
    status = pbs_qstat.status_from_attributes("5.srv", attributes, PbsFlavour.PBS_PRO)
    assert status.state is JobState.COMPLETED and status.reason is None


def test_a_tenant_whose_allocation_ended_keeps_only_the_allocations_ending_reason() -> None:
    ref = slurm_tenant.TenantRef.parse("12:abc:1")
    held_once = slurm_tenant_poll.observe_tenant(ref, "12:abc:1", None, ("COMPLETED", "JobHeldUser"))
    assert (
        held_once.status is not None and held_once.status.reason == "allocation 12 ended COMPLETED while the tenant ran"
    )
    timed_out = slurm_tenant_poll.observe_tenant(ref, "12:abc:1", None, ("TIMEOUT", "TimeLimit"))
    assert timed_out.status is not None and "ended TIMEOUT (TimeLimit)" in str(timed_out.status.reason)


# --- one summary line for every backend ----------------------------------------------------------

EVERY_OPERATOR = {
    "Slurm job": lambda: SlurmSubmitOperator(task_id="t", command="true"),
    "PBS job": lambda: PbsOperator(task_id="t", command="true"),
    "SGE job": lambda: SgeOperator(task_id="t", command="true"),
    "Slurm tenant": lambda: SlurmTenantOperator(task_id="t", reservation="pool", command="true"),
    "AWS Batch job": lambda: BatchRevisionOperator(task_id="t", command="true", image="alpine:3"),
    "EC2 instance": lambda: Ec2EphemeralOperator(
        task_id="t", image="alpine:3", command="true", time_limit=timedelta(minutes=5)
    ),
}


@pytest.mark.parametrize("noun", EVERY_OPERATOR)
def test_every_backend_ends_a_job_with_one_summary_line_in_one_format(noun: str) -> None:
    status = JobStatus(
        job_id="42",
        state=JobState.FAILED,
        native_state="FAILED",
        exit_code=3,
        reason="NonZeroExitCode",
        elapsed=timedelta(seconds=75),
        nodes="n1",
        max_rss_mb=512.0,
    )
    line = EVERY_OPERATOR[noun]().summary(status)
    assert line.startswith(f"{noun} 42")
    assert re.search(
        r" ended FAILED \(exit 3(:0)?\) after 00:01:15, reason: NonZeroExitCode, on n1, peak memory 512\.0 MiB$", line
    ), line
