"""A finished PBS job is a success only on an exit status of 0, recorded by qstat or by its script."""

from __future__ import annotations

from pathlib import Path

from airflow_hpc_provider.dialects.pbs import PbsDialect
from airflow_hpc_provider.dialects.pbs_exits import with_recorded_exit
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.dialects.remote_shell import parse_framed
from airflow_hpc_provider.jobs import JobState, JobStatus

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pbs"


def read_recorded_poll() -> dict:
    framed = parse_framed((FIXTURES / "torque_poll_with_exits.out").read_bytes(), "AIRFLOW_HPC_recexits")
    report = PbsDialect(PbsFlavour.TORQUE, ".airflow-hpc/logs").read_poll(framed.sections, ["4810", "4811", "4812"])
    assert report.failure is None
    return dict(report.observations)


def test_a_finished_wrapper_job_whose_script_recorded_0_completed() -> None:
    seen = read_recorded_poll()["4810"]
    assert seen.final and seen.status is not None
    assert (seen.status.state, seen.status.exit_code) == (JobState.COMPLETED, 0)


def test_a_finished_wrapper_job_whose_script_recorded_3_failed_with_exit_3() -> None:
    seen = read_recorded_poll()["4811"]
    assert seen.final and seen.status is not None
    assert (seen.status.state, seen.status.exit_code) == (JobState.FAILED, 3)


def test_a_running_job_is_not_final_whatever_files_exist() -> None:
    seen = read_recorded_poll()["4812"]
    assert not seen.final and seen.status is not None and seen.status.state is JobState.RUNNING


def finished_without_exit() -> JobStatus:
    return JobStatus(job_id="9", state=JobState.FAILED, native_state="C", reason="no exit status")


def test_without_a_recorded_status_a_finished_job_stays_failed_with_its_exit_unknown() -> None:
    status = with_recorded_exit(finished_without_exit(), None)
    assert status.state is JobState.FAILED and status.exit_code is None


def test_a_script_killed_by_a_signal_is_reported_with_the_signal() -> None:
    status = with_recorded_exit(finished_without_exit(), 143)
    assert (status.state, status.exit_code, status.signal) == (JobState.FAILED, 143, 15)


def test_qstats_own_exit_status_is_never_overridden_by_a_file() -> None:
    from_qstat = JobStatus(job_id="9", state=JobState.FAILED, native_state="F", exit_code=2)
    assert with_recorded_exit(from_qstat, 0) is from_qstat


def test_a_cancelled_job_stays_cancelled_even_if_its_script_recorded_a_status() -> None:
    cancelled = JobStatus(job_id="9", state=JobState.CANCELLED, native_state="F", reason="deleted")
    assert with_recorded_exit(cancelled, 143) is cancelled
