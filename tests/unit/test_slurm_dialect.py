"""The Slurm dialect against golden scripts and output recorded on the Slurm 22.05 test cluster.

The recordings and how each was made are described in tests/fixtures/slurm/README.md. Set
``HPC_UPDATE_GOLDEN=1`` to rewrite the golden scripts after a deliberate change, then read the diff.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import slurm, slurm_status
from airflow_hpc_provider.dialects.remote_shell import parse_framed
from airflow_hpc_provider.jobs import JobSpec, JobState, JobStatus
from airflow_hpc_provider.resources import build_resources

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm"
GOLDEN = FIXTURES / "golden"
POLL_TOKEN = "AIRFLOW_HPC_3f9c0a7e5b1d2468"


def recorded(name: str) -> str:
    return (FIXTURES / name).read_text()


def recorded_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HPC_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


# --- render_script -------------------------------------------------------------------------------

USER_SCRIPT = """#!/usr/bin/env bash
#SBATCH --job-name=my-own-name
#SBATCH --ntasks=1

# the author's comment stays in the header
set -eu
echo "training on $(hostname)"
srun python train.py "$@"
"""


def test_a_plain_command_becomes_a_bash_script_with_only_the_requeued_run_marker_added() -> None:
    spec = JobSpec(command="python train.py --epochs 3", job_name="train")

    assert_golden("command_mode.sh", slurm.render_script(spec))


def test_a_login_shell_job_gets_bash_dash_l_and_its_setup_lines_before_the_command() -> None:
    spec = JobSpec(
        command="python train.py\n",
        job_name="train",
        login_shell=True,
        setup=("module load python/3.11", "source ~/venvs/train/bin/activate"),
    )

    assert_golden("login_shell.sh", slurm.render_script(spec))


def test_a_user_script_keeps_its_shebang_and_directives_and_gets_setup_after_its_header() -> None:
    spec = JobSpec(
        command="ignored when a script is given",
        job_name="train",
        login_shell=True,
        resources=build_resources(partition="long", time_limit="1-12:00:00"),
        env_names=("DATA_DIR", "RUN_ID"),
        setup=("module load cuda/12.2", "export OMP_NUM_THREADS=2"),
    )

    assert_golden("user_script.sh", slurm.render_script(spec, script=USER_SCRIPT))


def test_every_resource_becomes_its_own_sbatch_line_in_a_fixed_order() -> None:
    spec = JobSpec(
        command="srun ./simulate --steps 1000",
        job_name="simulate",
        resources=build_resources(
            partition="debug,long",
            account="myacct",
            nodes=2,
            cpus=4,
            memory="4G",
            time_limit=timedelta(hours=2, seconds=30),
            gpus=1,
            gres="gpu:a100:1",
        ),
        env_names=("TOKEN",),
        setup=("cd /scratch/run",),
        extra_directives=("--exclusive", "--constraint=ib"),
    )

    assert_golden("all_resources.sh", slurm.render_script(spec))


def test_a_user_script_without_a_shebang_gets_ours_and_honours_the_login_shell() -> None:
    spec = JobSpec(command="", job_name="x", login_shell=True, setup=("module load gcc",))

    rendered = slurm.render_script(spec, script="#SBATCH --ntasks=2\necho hi\n")

    assert rendered == f"#!/bin/bash -l\n#SBATCH --ntasks=2\n{slurm.RUN_MARKER_LINES}module load gcc\necho hi\n"


def test_a_script_without_a_final_newline_never_has_setup_glued_onto_a_directive() -> None:
    spec = JobSpec(command="", job_name="x", setup=("module load gcc",))

    assert slurm.render_script(spec, script="#!/bin/sh\n#SBATCH --ntasks=2") == (
        f"#!/bin/sh\n#SBATCH --ntasks=2\n{slurm.RUN_MARKER_LINES}module load gcc\n"
    )
    assert slurm.render_script(spec, script="#!/bin/sh") == f"#!/bin/sh\n{slurm.RUN_MARKER_LINES}module load gcc\n"


def test_a_command_without_a_final_newline_gets_one() -> None:
    assert slurm.render_script(JobSpec(command="true", job_name="x")).endswith("true\n")


# --- slurm_time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (timedelta(minutes=1), "00:01:00"),
        (timedelta(seconds=61), "00:02:00"),
        (timedelta(seconds=60, microseconds=1), "00:02:00"),
        (timedelta(milliseconds=500), "00:01:00"),
        (timedelta(hours=1, minutes=59, seconds=59), "02:00:00"),
        (timedelta(hours=36), "1-12:00:00"),
        (timedelta(days=1, seconds=1), "1-00:01:00"),
    ],
)
def test_a_time_limit_is_rounded_up_to_the_whole_minute_slurm_will_apply(limit: timedelta, expected: str) -> None:
    assert slurm.slurm_time(limit) == expected


def test_a_sub_minute_limit_never_renders_as_zero_which_slurm_reads_as_no_limit() -> None:
    assert slurm.slurm_time(timedelta(microseconds=1)) != "00:00:00"


# --- parse_squeue on recorded output ---------------------------------------------------------------


def test_a_held_job_is_reported_held_not_pending() -> None:
    assert slurm_status.parse_squeue(recorded("squeue_held.txt")) == {
        "3": JobStatus(
            job_id="3",
            state=JobState.HELD,
            native_state="PENDING",
            reason="JobHeldUser",
            nodes=None,
            exit_code=None,
            signal=None,
            elapsed=timedelta(0),
        )
    }


def test_a_job_waiting_for_resources_is_pending_and_a_running_job_names_its_node() -> None:
    statuses = slurm_status.parse_squeue(recorded("squeue_pending_and_running.txt"))

    assert statuses["5"] == JobStatus(
        job_id="5", state=JobState.PENDING, native_state="PENDING", reason="Resources", elapsed=timedelta(0)
    )
    assert statuses["4"] == JobStatus(
        job_id="4",
        state=JobState.RUNNING,
        native_state="RUNNING",
        reason=None,
        nodes="vm",
        elapsed=timedelta(seconds=1),
    )
    assert statuses["3"].state is JobState.HELD
    assert statuses["2"].describe() == "RUNNING on vm"


def test_a_running_job_has_no_exit_code_even_though_squeue_prints_zero() -> None:
    status = slurm_status.parse_squeue(recorded("squeue_running.txt"))["2"]

    assert status.state is JobState.RUNNING
    assert status.exit_code is None
    assert status.signal is None
    assert status.elapsed == timedelta(seconds=5)


def test_squeue_decodes_its_raw_wait_status_into_the_exit_code_sacct_would_show() -> None:
    # squeue printed 768 for 'exit 3', 253 for the OOM kill, 15 for SIGTERM (cancel, time limit).
    statuses = slurm_status.parse_squeue(recorded("squeue_mixed.txt"))

    seen = {job_id: (s.state, s.exit_code, s.signal) for job_id, s in statuses.items()}
    assert seen == {
        "2": (JobState.TIMEOUT, 0, 15),
        "3": (JobState.HELD, None, None),
        "4": (JobState.COMPLETED, 0, 0),
        "5": (JobState.FAILED, 3, 0),
        "6": (JobState.OUT_OF_MEMORY, 0, 125),
        "7": (JobState.CANCELLED, 0, 15),
    }


def test_an_id_squeue_does_not_know_is_simply_absent_from_its_answer() -> None:
    assert "99999" not in slurm_status.parse_squeue(recorded("squeue_mixed.txt"))


def test_each_single_job_recording_parses_to_the_same_status_as_in_the_mixed_recording() -> None:
    mixed = slurm_status.parse_squeue(recorded("squeue_mixed.txt"))

    for name, job_id in [
        ("squeue_completed.txt", "4"),
        ("squeue_failed_exit3.txt", "5"),
        ("squeue_out_of_memory.txt", "6"),
        ("squeue_cancelled.txt", "7"),
        ("squeue_timeout.txt", "2"),
    ]:
        assert slurm_status.parse_squeue(recorded(name)) == {job_id: mixed[job_id]}


def test_a_failed_job_in_squeue_keeps_slurms_reason() -> None:
    status = slurm_status.parse_squeue(recorded("squeue_failed_exit3.txt"))["5"]

    assert status == JobStatus(
        job_id="5",
        state=JobState.FAILED,
        native_state="FAILED",
        reason="NonZeroExitCode",
        nodes="vm",
        exit_code=3,
        signal=0,
        elapsed=timedelta(0),
    )


def test_a_job_completing_after_its_time_limit_is_not_yet_terminal() -> None:
    status = slurm_status.parse_squeue(recorded("squeue_completing.txt"))["2"]

    assert status.state is JobState.COMPLETING
    assert not status.state.is_terminal
    assert status.exit_code is None
    assert status.elapsed == timedelta(minutes=1, seconds=15)


def test_squeue_with_several_unknown_ids_prints_nothing_and_that_means_no_statuses() -> None:
    assert recorded("squeue_unknown_ids_several.txt") == ""
    assert slurm_status.parse_squeue(recorded("squeue_unknown_ids_several.txt")) == {}


def test_squeues_error_message_for_an_unknown_id_is_not_mistaken_for_a_job() -> None:
    assert slurm_status.parse_squeue(recorded("squeue_unknown_id_single.txt")) == {}


def test_a_native_state_this_provider_does_not_know_is_unknown_and_not_terminal() -> None:
    status = slurm_status.parse_squeue("42|WARPING|None|vm|0|0:07|\n")["42"]

    assert status.state is JobState.UNKNOWN
    assert status.native_state == "WARPING"
    assert status.exit_code is None


def test_short_or_blank_squeue_lines_are_skipped() -> None:
    assert slurm_status.parse_squeue("\n  \n7|RUNNING|None\n|RUNNING|None|vm|0|0:01|\n") == {}


# --- parse_sacct on recorded output ----------------------------------------------------------------


def test_a_completed_job_has_exit_code_zero_and_its_batch_steps_peak_memory() -> None:
    assert slurm_status.parse_sacct(recorded("sacct_completed.txt")) == {
        "4": JobStatus(
            job_id="4",
            state=JobState.COMPLETED,
            native_state="COMPLETED",
            reason=None,
            nodes="vm",
            exit_code=0,
            signal=0,
            elapsed=timedelta(seconds=2),
            max_rss_mb=0.2,
        )
    }


def test_a_job_that_exited_3_is_failed_with_exit_code_3() -> None:
    assert slurm_status.parse_sacct(recorded("sacct_failed_exit3.txt")) == {
        "5": JobStatus(
            job_id="5",
            state=JobState.FAILED,
            native_state="FAILED",
            reason=None,
            nodes="vm",
            exit_code=3,
            signal=0,
            elapsed=timedelta(0),
            max_rss_mb=0.0,
        )
    }


def test_cancelled_by_a_uid_is_cancelled_and_keeps_the_native_words() -> None:
    status = slurm_status.parse_sacct(recorded("sacct_cancelled.txt"))["7"]

    assert status == JobStatus(
        job_id="7",
        state=JobState.CANCELLED,
        native_state="CANCELLED by 1001",
        reason=None,
        nodes="vm",
        exit_code=0,
        signal=0,
        elapsed=timedelta(seconds=6),
        max_rss_mb=0.2,
    )
    assert status.describe() == "CANCELLED by 1001"


def test_an_oom_killed_job_is_out_of_memory_with_exit_0_and_signal_125_as_recorded() -> None:
    assert slurm_status.parse_sacct(recorded("sacct_out_of_memory.txt")) == {
        "6": JobStatus(
            job_id="6",
            state=JobState.OUT_OF_MEMORY,
            native_state="OUT_OF_MEMORY",
            reason=None,
            nodes="vm",
            exit_code=0,
            signal=125,
            elapsed=timedelta(0),
            max_rss_mb=0.0,
        )
    }


def test_a_timed_out_job_is_timeout_although_its_batch_step_says_cancelled() -> None:
    status = slurm_status.parse_sacct(recorded("sacct_timeout.txt"))["2"]

    assert status == JobStatus(
        job_id="2",
        state=JobState.TIMEOUT,
        native_state="TIMEOUT",
        reason=None,
        nodes="vm",
        exit_code=0,
        signal=0,
        elapsed=timedelta(minutes=1, seconds=15),
        max_rss_mb=0.2,
    )


def test_a_held_job_in_sacct_is_held_has_no_node_and_no_exit_code() -> None:
    assert slurm_status.parse_sacct(recorded("sacct_held.txt")) == {
        "3": JobStatus(
            job_id="3",
            state=JobState.HELD,
            native_state="PENDING",
            reason="JobHeldUser",
            nodes=None,
            exit_code=None,
            signal=None,
            elapsed=timedelta(0),
        )
    }


def test_a_running_job_in_sacct_has_no_exit_code_although_sacct_prints_0_0() -> None:
    status = slurm_status.parse_sacct(recorded("sacct_running.txt"))["2"]

    assert status.state is JobState.RUNNING
    assert (status.exit_code, status.signal) == (None, None)
    assert status.max_rss_mb is None  # the running step had no sample yet


def test_sacct_steps_never_appear_as_jobs_of_their_own() -> None:
    statuses = slurm_status.parse_sacct(recorded("sacct_mixed.txt"))

    assert sorted(statuses) == ["2", "3", "4", "5", "6", "7"]
    assert {job_id: s.state for job_id, s in statuses.items()} == {
        "2": JobState.TIMEOUT,
        "3": JobState.HELD,
        "4": JobState.COMPLETED,
        "5": JobState.FAILED,
        "6": JobState.OUT_OF_MEMORY,
        "7": JobState.CANCELLED,
    }


def test_the_peak_memory_is_the_largest_over_all_steps() -> None:
    text = (
        "9|COMPLETED|0:0|None|00:01:00|vm|\n"
        "9.batch|COMPLETED|0:0||00:01:00|vm|2048K\n"
        "9.0|COMPLETED|0:0||00:00:50|vm|3M\n"
    )

    assert slurm_status.parse_sacct(text)["9"].max_rss_mb == 3.0


# --- parse_poll on recorded framed bytes ------------------------------------------------------------


def test_a_real_poll_while_jobs_ran_gives_squeue_for_all_and_sacct_for_the_ended_ones() -> None:
    framed = parse_framed(recorded_bytes("poll_output.bin"), POLL_TOKEN)
    poll = slurm_status.parse_poll(framed.sections, ["2", "3", "4", "5", "6", "7"])

    assert poll.errors == ()
    assert poll.accounting_available
    queue = {job_id: seen.queue.state for job_id, seen in poll.observations.items() if seen.queue}
    accounting = {job_id: seen.accounting.state for job_id, seen in poll.observations.items() if seen.accounting}
    assert queue == {
        "2": JobState.RUNNING,
        "3": JobState.HELD,
        "4": JobState.COMPLETED,
        "5": JobState.FAILED,
        "6": JobState.OUT_OF_MEMORY,
        "7": JobState.RUNNING,
    }
    # The script asked sacct only about the jobs squeue no longer showed as active.
    assert accounting == {"4": JobState.COMPLETED, "5": JobState.FAILED, "6": JobState.OUT_OF_MEMORY}


def test_a_real_poll_after_the_jobs_ended_has_sacct_words_for_each_of_them() -> None:
    framed = parse_framed(recorded_bytes("poll_output_resumed.bin"), POLL_TOKEN)
    poll = slurm_status.parse_poll(framed.sections, ["2", "3", "4", "5", "6", "7"])

    assert poll.observations["7"].accounting is not None
    assert poll.observations["7"].accounting.native_state == "CANCELLED by 1001"
    assert poll.observations["2"].accounting is not None
    assert poll.observations["2"].accounting.state is JobState.TIMEOUT
    assert poll.observations["3"].accounting is None  # still held: squeue's word only


def test_a_poll_of_an_id_nobody_knows_is_no_error_and_observes_nothing() -> None:
    framed = parse_framed(recorded_bytes("poll_output_unknown_id.bin"), "AIRFLOW_HPC_0123456789abcdef")

    assert framed.sections["squeue"] == (1, "slurm_load_jobs error: Invalid job id specified")
    poll = slurm_status.parse_poll(framed.sections, ["99990"])

    assert poll.errors == ()
    assert poll.observations["99990"] == slurm_status.SlurmObservation(queue=None, accounting=None)


def test_a_failing_squeue_is_reported_as_an_error_with_its_output() -> None:
    poll = slurm_status.parse_poll(
        {"squeue": (1, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)")}, ["5"]
    )

    assert poll.errors == (
        "squeue exited 1: 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)'",
    )
    assert poll.observations["5"].queue is None


def test_a_cluster_without_accounting_is_noted_and_not_an_error() -> None:
    sections = {
        "squeue": (0, recorded("squeue_completed.txt")),
        "sacct": (1, "sacct: error: Slurm accounting storage is disabled"),
    }

    poll = slurm_status.parse_poll(sections, ["4"])

    assert not poll.accounting_available
    assert poll.errors == ()
    assert poll.observations["4"].queue is not None


def test_a_failing_sacct_on_an_accounting_cluster_is_an_error() -> None:
    poll = slurm_status.parse_poll({"sacct": (1, "sacct: error: slurmdbd: Connection refused")}, ["4"])

    assert poll.accounting_available
    assert poll.errors == ("sacct exited 1: 'sacct: error: slurmdbd: Connection refused'",)


# --- parse_submit_output on recorded output ----------------------------------------------------------


def test_a_fresh_submission_reports_its_new_job_id_and_state() -> None:
    outcome = slurm.parse_submit_output(recorded("submit_fresh.txt"))

    assert (outcome.job_id, outcome.adopted, outcome.state) == ("10", False, "PENDING")


def test_running_the_same_submission_again_adopts_the_live_job_instead_of_submitting() -> None:
    outcome = slurm.parse_submit_output(recorded("submit_adopted.txt"))

    assert (outcome.job_id, outcome.adopted, outcome.state) == ("10", True, "PENDING")


def test_a_submission_over_the_concurrency_limit_submits_nothing_and_says_how_many_run() -> None:
    outcome = slurm.parse_submit_output(recorded("submit_busy.txt"))

    assert outcome.job_id is None
    assert outcome.busy_jobs == 1
    assert not outcome.adopted


def test_an_array_task_id_is_accepted_and_an_empty_state_is_none() -> None:
    outcome = slurm.parse_submit_output("SUBMITTED 123_4\nSTATE \n")

    assert (outcome.job_id, outcome.state) == ("123_4", None)


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        "STATE PENDING\n",
        "SUBMITTED \n",
        "SUBMITTED 12;cluster1\n",
        "sbatch: error: Batch job submission failed\n",
    ],
)
def test_submit_output_without_a_clean_job_id_is_an_error(stdout: str) -> None:
    with pytest.raises(ValueError, match="no job id"):
        slurm.parse_submit_output(stdout)


# --- field parsers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0:0", (0, 0)),
        ("3:0", (3, 0)),
        ("0:125", (0, 125)),
        (" 0:15 ", (0, 15)),
        ("", (None, None)),
        ("3", (None, None)),
        ("-1:0", (None, None)),
        ("a:b", (None, None)),
    ],
)
def test_an_exit_code_field_is_code_and_signal_or_unknown_never_zero(
    text: str, expected: tuple[int | None, int | None]
) -> None:
    assert slurm_status.parse_exit_code(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0:00", timedelta(0)),
        ("1:15", timedelta(minutes=1, seconds=15)),
        ("00:01:15", timedelta(minutes=1, seconds=15)),
        ("12:03:04", timedelta(hours=12, minutes=3, seconds=4)),
        ("1-02:03:04", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("3:04.123", timedelta(minutes=3, seconds=4)),
        ("", None),
        ("INVALID", None),
        ("UNLIMITED", None),
        ("5", None),
    ],
)
def test_an_elapsed_field_in_any_slurm_form_becomes_a_timedelta(text: str, expected: timedelta | None) -> None:
    assert slurm_status.parse_elapsed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("208K", 208.0),
        ("1.5M", 1536.0),
        ("2G", 2 * 1024 * 1024.0),
        ("1T", 1024.0**3),
        ("2048", 2.0),
        ("0", 0.0),
        ("", None),
        ("12X", None),
        ("-4K", None),
    ],
)
def test_a_maxrss_field_becomes_kibibytes(text: str, expected: float | None) -> None:
    assert slurm_status.parse_rss_kb(text) == expected


@pytest.mark.parametrize(
    ("native", "reason", "expected"),
    [
        ("PENDING", "Priority", JobState.PENDING),
        ("PENDING", "JobHeldUser", JobState.HELD),
        ("PENDING", "JobHeldAdmin", JobState.HELD),
        ("running", None, JobState.RUNNING),
        ("REQUEUE_HOLD", None, JobState.HELD),
        ("PREEMPTED", None, JobState.PREEMPTED),
        ("NODE_FAIL", None, JobState.NODE_FAIL),
        ("BRAND_NEW_STATE", None, JobState.UNKNOWN),
        ("", None, JobState.UNKNOWN),
    ],
)
def test_native_states_map_onto_shared_states(native: str, reason: str | None, expected: JobState) -> None:
    assert slurm_status.map_state(native, reason) is expected


def test_cancel_quotes_every_id() -> None:
    assert slurm.cancel_script(["12", "13_2", "x; rm -rf ~"]) == "scancel -- 12 13_2 'x; rm -rf ~'\n"
