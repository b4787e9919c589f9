"""The Slurm submit script, run by /bin/sh against stand-in squeue/sacct/sbatch that record their calls.

What it must do: ask the scheduler only about this task instance's recorded jobs, adopt the newest
one no trigger watched (running or ended), record a new job before printing its id, and refuse to
submit blind when the scheduler cannot answer.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.jobs import JobKey, JobSpec
from tests.unit.stand_in_login import StandInLogin

pytestmark = pytest.mark.skipif(shutil.which("flock") is None, reason="the submit script locks with flock")

KEY = JobKey(task_digest="0123456789abcdef0123", try_number=3)
LOG_DIR = "logs"


class Login(StandInLogin):
    def recorded_jobs(self, *ids: str) -> None:
        (self.log_dir / f"{KEY.task_digest}.jobs").write_text("".join(f"{i}\n" for i in ids))

    def submit(self, max_concurrent_jobs: int | None = None) -> subprocess.CompletedProcess[str]:
        spec = JobSpec(command="echo hi", job_name="job")
        script = slurm.submit_script(
            spec,
            slurm.render_script(spec),
            key=KEY,
            log_dir=LOG_DIR,
            env={},
            max_concurrent_jobs=max_concurrent_jobs,
        )
        return self.run(script)


@pytest.fixture
def login(tmp_path: Path) -> Login:
    return Login(tmp_path, LOG_DIR)


def test_a_first_submission_asks_no_scheduler_about_other_jobs_and_records_the_new_one(login: Login) -> None:
    result = login.submit()

    assert result.returncode == 0, result.stderr
    assert slurm.parse_submit_output(result.stdout).job_id == "5000"
    assert [call for call in login.calls("squeue") if "-u" in call] == []
    assert (login.home / LOG_DIR / f"{KEY.task_digest}.jobs").read_text() == "5000\n"
    assert "--open-mode=append" in login.calls("sbatch")[0]


def test_a_first_submission_asks_the_scheduler_nothing_but_sbatch(login: Login) -> None:
    """No record, so nothing to find: no squeue (not even for the new job's state) and no sacct,
    each a process on the login node and an RPC to slurmctld for every submission."""
    result = login.submit()

    assert result.returncode == 0, result.stderr
    assert slurm.parse_submit_output(result.stdout).job_id == "5000"
    assert (login.calls("squeue"), login.calls("sacct"), len(login.calls("sbatch"))) == ([], [], 1)


def test_a_retry_asks_about_the_recorded_jobs_only_and_adopts_the_newest_live_one(login: Login) -> None:
    login.recorded_jobs("4000", "4001")
    login.answer("squeue", "4000|COMPLETED|\n4001|RUNNING|\n")

    result = login.submit()
    outcome = slurm.parse_submit_output(result.stdout)

    assert (outcome.job_id, outcome.adopted, outcome.ended, outcome.state) == ("4001", True, False, "RUNNING")
    assert login.calls("squeue") == ["-h -t all -j 4001,4000 -O JobID:|,State:|,JobArrayID:|"]
    assert login.calls("sbatch") == []


def test_a_job_that_ended_while_its_worker_was_dead_is_adopted_not_run_again(login: Login) -> None:
    login.recorded_jobs("4001")
    login.answer("squeue", "4001|FAILED|\n")

    outcome = slurm.parse_submit_output(login.submit().stdout)

    assert (outcome.job_id, outcome.adopted, outcome.ended, outcome.state) == ("4001", True, True, "FAILED")
    assert login.calls("sbatch") == []


def test_an_ended_job_squeue_forgot_is_found_in_accounting(login: Login) -> None:
    login.recorded_jobs("4001")
    login.answer("squeue", "slurm_load_jobs error: Invalid job id specified\n", rc=1)
    login.answer("sacct", "4001|CANCELLED by 1001\n")

    outcome = slurm.parse_submit_output(login.submit().stdout)

    assert (outcome.job_id, outcome.ended, outcome.state) == ("4001", True, "CANCELLED")


def test_a_job_a_trigger_watched_is_never_adopted_and_a_new_one_is_submitted(login: Login) -> None:
    login.recorded_jobs("4001")
    login.claim(KEY.task_digest, "4001")
    login.answer("squeue", "4001|RUNNING|\n")

    outcome = slurm.parse_submit_output(login.submit().stdout)

    assert (outcome.job_id, outcome.adopted) == ("5000", False)
    assert (login.home / LOG_DIR / f"{KEY.task_digest}.jobs").read_text() == "4001\n5000\n"


def test_a_job_nobody_knows_any_more_is_submitted_again(login: Login) -> None:
    login.recorded_jobs("4001")
    login.answer("squeue", "slurm_load_jobs error: Invalid job id specified\n", rc=1)
    login.answer("sacct", "")

    outcome = slurm.parse_submit_output(login.submit().stdout)

    assert (outcome.job_id, outcome.adopted) == ("5000", False)


@pytest.mark.parametrize("program", ["squeue", "sacct"])
def test_a_scheduler_that_cannot_answer_stops_the_submission_rather_than_risk_a_second_run(
    login: Login, program: str
) -> None:
    login.recorded_jobs("4001")
    if program == "sacct":
        login.answer("squeue", "slurm_load_jobs error: Invalid job id specified\n", rc=1)
    login.answer(program, f"{program}: error: Unable to contact slurm controller (connect failure)\n", rc=1)

    result = login.submit()

    assert result.returncode == 1
    assert f"{program} exited 1" in result.stderr
    assert login.calls("sbatch") == []


def test_the_cap_still_counts_every_live_job_of_the_provider(login: Login) -> None:
    login.answer("squeue", "1|airflow-hpc:aa:try1|\n2|airflow-hpc:bb:try1|\n3|someone else|\n")

    result = login.submit(max_concurrent_jobs=2)

    assert slurm.parse_submit_output(result.stdout).busy_jobs == 2
    assert login.calls("sbatch") == []
    # One line per array element: a pending array's elements share one line without -r.
    assert [call.split()[:2] for call in login.calls("squeue")] == [["-h", "-r"]]
