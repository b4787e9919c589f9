"""A PBS job's end, where qstat cannot tell it: the script records the signal it received at once,
and on the Slurm-backed wrappers Slurm's own accounting names CANCELLED and TIMEOUT.

The scripts run here for real, under bash and dash, as the batch shell would; the poll answers are
recorded (see tests/fixtures/pbs/README.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import pbs
from airflow_hpc_provider.dialects.pbs import PbsDialect
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.jobs import JobSpec, JobState

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pbs"
QSTAT_FINISHED = "Job Id:\t{id}\n\tJob_Name = j-abc-try1\n\tjob_state = C\n\texec_host = vm/1\n"


def run_script(tmp_path: Path, command: str, shell: str = "bash", **env: str) -> subprocess.Popen[bytes]:
    exits = tmp_path / "exit"
    script = pbs.render_script(JobSpec(command=command, job_name="t"), PbsFlavour.TORQUE, exit_dir=str(exits))
    if shell != "bash":
        script = script.replace("#!/bin/bash", f"#!/bin/{shell}", 1)
    path = tmp_path / "job.sh"
    path.write_text(script)
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PBS_JOBID": "42.server", **env}
    return subprocess.Popen([shell, str(path)], env=environment, start_new_session=True)


def wait_for_file(path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {timeout_s}s")


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_a_term_to_the_batch_shell_is_recorded_at_once_while_its_command_still_runs(tmp_path: Path, shell: str) -> None:
    """What a qdel or a walltime kill does; the scheduler's SIGKILL follows seconds later, so a
    trap that waits for the command to end never runs (the test waits 5 s; the command, 60)."""
    started = tmp_path / "started"
    job = run_script(tmp_path, f"touch {started}; sleep 60", shell)
    try:
        wait_for_file(started, 10)
        job.send_signal(signal.SIGTERM)
        assert wait_for_file(tmp_path / "exit" / "42", 5) == "143 TERM\n"
        assert job.wait(5) == 143
    finally:
        with contextlib.suppress(ProcessLookupError):  # what the scheduler's SIGKILL would end
            os.killpg(job.pid, signal.SIGKILL)


@pytest.mark.parametrize(("command", "recorded"), [("exit 3", "3\n"), ("true", "0\n"), ("kill -9 $BASHPID", "137\n")])
def test_the_commands_own_end_is_recorded(tmp_path: Path, command: str, recorded: str) -> None:
    job = run_script(tmp_path, command)
    job.wait(10)
    assert (tmp_path / "exit" / "42").read_text() == recorded


def test_an_array_element_records_what_it_is_and_runs_nothing(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    job = run_script(tmp_path, f"touch {ran}", PBS_ARRAY_INDEX="2")
    assert job.wait(10) == 1
    assert (tmp_path / "exit" / "42").read_text() == "array\n"
    assert not ran.exists()


# --- what the poll concludes ------------------------------------------------------------------------


def read(dialect: PbsDialect, job_id: str, exits: str, accounting: tuple[int, str] | None = None):  # type: ignore[no-untyped-def]
    sections = {"qstat": (0, QSTAT_FINISHED.format(id=job_id)), "qstat_stderr": (0, ""), "exits": (0, exits)}
    if accounting is not None:
        sections["accounting"] = accounting
    return dialect.read_poll(sections, [job_id]).observations[job_id]


@pytest.mark.parametrize(
    ("job_id", "exits", "state", "shown"),
    [
        ("239", "239 143 TERM\n", JobState.CANCELLED, "CANCELLED by 1001 in Slurm's accounting"),
        ("243", "243 143 TERM\n", JobState.TIMEOUT, "TIMEOUT in Slurm's accounting"),
        ("240", "", JobState.FAILED, "FAILED in Slurm's accounting"),
    ],
)
def test_a_wrapper_jobs_end_is_asked_of_slurms_accounting_in_the_next_poll(
    job_id: str, exits: str, state: JobState, shown: str
) -> None:
    dialect = PbsDialect(PbsFlavour.TORQUE, ".airflow-hpc/logs")
    first = read(dialect, job_id, exits)
    assert first.status is not None and not first.final and first.status.state is JobState.FAILED
    script = dialect.poll_script("T", [job_id], [])
    assert f"sacct -n -P -X -j {job_id} -o JobIDRaw,State,ExitCode,Elapsed" in script

    second = read(dialect, job_id, exits, (0, (FIXTURES / "wrapper_accounting.txt").read_text()))
    assert second.final and second.status is not None
    assert (second.status.state, second.status.reason) == (state, shown)
    if not exits:  # nothing recorded (the script was SIGKILLed): Slurm's exit names the signal
        assert (second.status.exit_code, second.status.signal) == (0, 9)
    assert "sacct" not in dialect.poll_script("T", [job_id], [])


def test_without_sacct_the_recorded_signal_stands_and_is_never_a_success() -> None:
    dialect = PbsDialect(PbsFlavour.TORQUE, ".airflow-hpc/logs")
    assert not read(dialect, "50", "50 143 TERM\n").final
    seen = read(dialect, "50", "50 143 TERM\n", (127, "no sacct"))
    assert seen.final and seen.status is not None
    assert seen.status.state is JobState.FAILED and (seen.status.exit_code, seen.status.signal) == (143, 15)
    assert "SIGTERM (a qdel or a time limit)" in str(seen.status.reason)


def test_accounting_that_has_not_caught_up_is_asked_again() -> None:
    dialect = PbsDialect(PbsFlavour.TORQUE, ".airflow-hpc/logs")
    read(dialect, "51", "")
    seen = read(dialect, "51", "", (0, "51|RUNNING|0:0|00:00:05\n"))
    assert not seen.final  # the poller waits, within its grace for the squeue -> sacct gap
    assert "sacct" in dialect.poll_script("T", ["51"], [])


@pytest.mark.parametrize("exits", ["52 0\n", "52 3\n", "52 array\n"])
def test_an_end_the_script_recorded_plainly_needs_no_accounting(exits: str) -> None:
    dialect = PbsDialect(PbsFlavour.TORQUE, ".airflow-hpc/logs")
    assert read(dialect, "52", exits).final
    assert "sacct" not in dialect.poll_script("T", ["52"], [])


def test_a_real_torque_job_with_a_server_in_its_id_is_never_looked_up_in_slurm() -> None:
    dialect = PbsDialect(PbsFlavour.TORQUE, ".airflow-hpc/logs")
    seen = read(dialect, "53.head", "53 143 TERM\n")
    assert seen.final and seen.status is not None and seen.status.state is JobState.FAILED
    assert "sacct" not in dialect.poll_script("T", ["53.head"], [])
