"""The Grid Engine dialect against golden scripts and output recorded on the test cluster's Grid Engine.

The recordings, the script that made them and which job played which part are described in
tests/fixtures/sge/README.md (the ids are in jobs.json). The submit and cancel scripts are also run
here with /bin/sh against stand-in qsub/qstat/qdel programs that record what they receive, which
proves their quoting without a cluster. Set ``HPC_UPDATE_GOLDEN=1`` to rewrite the golden scripts
after a deliberate change, then read the diff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import remote_shell, sge
from airflow_hpc_provider.dialects.sge_status import (
    SGE_STATES,
    parse_error_reasons,
    parse_maxrss_mb,
    parse_qacct,
    parse_qstat_xml,
    parse_seconds,
    status_from_record,
)
from airflow_hpc_provider.errors import ConnectionConfigError, JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobState, Resources

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sge"
GOLDEN = FIXTURES / "golden"
JOBS: dict[str, str] = json.loads((FIXTURES / "jobs.json").read_text())
POLL_TOKEN = "AIRFLOW_HPC_5ge0fixture000001"
LOG_DIR = "fixrec/logs"
KEY = JobKey(task_digest="3e3e187859dfa6450327", try_number=2)
SUBMIT_KEY = JobKey.for_task_instance("fixture_dag", "record_submit", "manual__2026-11-30", -1, 1)

FULL_SPEC = JobSpec(
    command="python train.py --epochs 3",
    job_name="train model",
    resources=Resources(
        partition="all.q",
        account="testproj",
        nodes=1,
        cpus=4,
        memory_mb=4097,
        time_limit=timedelta(days=1, hours=12, minutes=30, seconds=5),
    ),
    env_names=("DATA_URL", "API_TOKEN"),
    setup=("module load python/3.11",),
    login_shell=True,
    working_dir="runs/today",
    extra_directives=("-l scratch=10G",),
)


def recorded(name: str) -> str:
    return (FIXTURES / name).read_text()


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HPC_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def normalised(script: str) -> str:
    return re.sub(r"AIRFLOW_HPC_EOF_[0-9a-f]{16}", "AIRFLOW_HPC_EOF_X", script)


# --- rendering ----------------------------------------------------------------------------------


def test_resources_become_queue_project_pe_per_slot_h_vmem_and_h_rt_directives():
    assert_golden("render_full.sh", sge.render_script(FULL_SPEC, parallel_environment="smp"))


def test_a_bare_spec_renders_a_plain_bash_script_with_no_directives():
    assert sge.render_script(JobSpec(command="echo hi", job_name="x")) == "#!/bin/bash\necho hi\n"


def test_a_users_script_keeps_its_shebang_and_directives_and_gets_setup_after_them():
    user_script = "#!/bin/zsh\n#$ -l scratch=1G\n\nprint hello\n"
    spec = JobSpec(
        command="", job_name="x", resources=Resources(time_limit=timedelta(minutes=5)), setup=("source env.sh",)
    )
    assert_golden("render_user_script.sh", sge.render_script(spec, script=user_script))


def test_h_rt_counts_hours_past_a_day_and_rounds_part_seconds_up_never_to_zero():
    assert sge.sge_time(timedelta(days=2, minutes=1)) == "48:01:00"
    assert sge.sge_time(timedelta(seconds=2.1)) == "0:00:03"
    assert sge.sge_time(timedelta(microseconds=1)) == "0:00:01"


def test_memory_is_divided_among_the_slots_because_h_vmem_is_per_slot():
    spec = JobSpec(command="x", job_name="x", resources=Resources(cpus=3, memory_mb=1000))
    assert sge.resource_options(spec, parallel_environment="smp") == ["-pe smp 3", "-l h_vmem=334M"]


def test_more_than_one_cpu_without_a_parallel_environment_is_refused():
    spec = JobSpec(command="x", job_name="x", resources=Resources(cpus=2))
    with pytest.raises(JobSpecError, match="parallel environment"):
        sge.render_script(spec)
    one = JobSpec(command="x", job_name="x", resources=Resources(cpus=1))
    assert sge.resource_options(one) == []


@pytest.mark.parametrize(
    ("resources", "words"),
    [
        (Resources(gpus=1), "-l gpu=2"),
        (Resources(gres="gpu:2"), "-l gpu=2"),
        (Resources(nodes=2), "places slots, not nodes"),
    ],
)
def test_requests_grid_engine_has_no_standard_word_for_are_refused_with_the_way_to_ask(resources, words):
    with pytest.raises(JobSpecError, match=re.escape(words)):
        sge.render_script(JobSpec(command="x", job_name="x", resources=resources))


@pytest.mark.parametrize("directive", ["-N x", "-o /tmp/x", "-j n", "-V", "-v A=1", "-S /bin/sh", "-wd /", "-t 1-5"])
def test_extra_directives_may_not_take_over_the_options_the_provider_owns(directive):
    with pytest.raises(JobSpecError, match="set by the provider"):
        sge.render_script(JobSpec(command="x", job_name="x", extra_directives=(directive,)))


def test_a_multi_line_extra_directive_is_refused():
    with pytest.raises(JobSpecError, match="single line"):
        sge.render_script(JobSpec(command="x", job_name="x", extra_directives=("-l a=1\n-N evil",)))


def test_a_parallel_environment_name_that_is_not_a_name_is_refused():
    spec = JobSpec(command="x", job_name="x", resources=Resources(cpus=2))
    with pytest.raises(JobSpecError, match="parallel_environment"):
        sge.render_script(spec, parallel_environment="smp 2\n#$ -N x")


def test_the_job_name_carries_the_task_digest_and_try_and_never_starts_with_a_digit():
    assert sge.job_name(JobSpec(command="x", job_name="train model"), KEY) == "train_model-3e3e187859dfa6450327-try2"
    assert sge.job_name(JobSpec(command="x", job_name="1st run"), KEY).startswith("j1st_run-")
    assert sge.job_name(JobSpec(command="x", job_name=""), KEY).startswith("job-")


# --- the submit script --------------------------------------------------------------------------


def test_the_submit_script_names_env_vars_only_and_sends_the_script_on_stdin():
    batch = sge.render_script(FULL_SPEC, parallel_environment="smp")
    env = {"DATA_URL": "s3://b/k", "API_TOKEN": "t"}
    script = sge.submit_script(FULL_SPEC, batch, key=KEY, log_dir="logs", env=env)
    assert_golden("submit.sh", normalised(script))


@pytest.mark.parametrize("log_dir", ["logs:x", "a,b", "$HOME/logs", "my logs", "logs\n"])
def test_a_log_dir_that_qsub_dash_o_would_misread_is_refused(log_dir):
    spec = JobSpec(command="x", job_name="x")
    with pytest.raises(ConnectionConfigError, match="log directory"):
        sge.submit_script(spec, "#!/bin/bash\n", key=KEY, log_dir=log_dir, env={})
    with pytest.raises(ConnectionConfigError):
        sge.SgeDialect(log_dir)


def test_an_env_name_that_is_not_a_name_is_refused_before_anything_runs():
    spec = JobSpec(command="x", job_name="x")
    with pytest.raises(JobSpecError, match="env name"):
        sge.submit_script(spec, "#!/bin/bash\n", key=KEY, log_dir="logs", env={"A,B": "x"})


def test_a_recorded_fresh_submission_yields_its_id_and_held_state():
    outcome = sge.parse_submit_output(recorded("submit_fresh.txt"))
    assert (outcome.job_id, outcome.adopted, outcome.state) == (JOBS["submitted"], False, "hqw")


def test_a_recorded_second_run_of_the_same_script_adopts_the_held_job():
    outcome = sge.parse_submit_output(recorded("submit_adopted.txt"))
    assert (outcome.job_id, outcome.adopted, outcome.state) == (JOBS["submitted"], True, "hqw")


@pytest.mark.parametrize("stdout", ["", "SUBMITTED \n", "SUBMITTED 42.1-3:1\n", "Your job 42 has been submitted\n"])
def test_submit_output_without_a_bare_id_is_an_error_not_a_guess(stdout):
    with pytest.raises(ValueError, match="no job id"):
        sge.parse_submit_output(stdout)


# Stand-in programs. qsub records its argv (NUL-separated), environment and stdin, prints an id;
# qstat prints the XML file it is given (or fails when told to); qdel answers as told.
FAKE_QSUB = """#!/bin/sh
for a in "$@"; do printf '%s\\0' "$a"; done > "$RECORD/argv"
env -0 > "$RECORD/env"
cat > "$RECORD/script"
echo 777
"""
FAKE_QSTAT = """#!/bin/sh
if [ -n "$QSTAT_FAILS" ]; then echo 'error: commlib error: got select error (Connection refused)' >&2; exit 1; fi
case "$1" in -xml) cat -- "$QSTAT_XML";; *) echo 'job-ID prior name';; esac
"""
FAKE_QDEL = """#!/bin/sh
printf '%s\\n' "$QDEL_SAYS"
exit "$QDEL_EXIT"
"""


def run_locally(tmp_path: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    bindir, record, home = tmp_path / "bin", tmp_path / "record", tmp_path / "home"
    for directory in (bindir, record, home):
        directory.mkdir(exist_ok=True)
    for name, text in (("qsub", FAKE_QSUB), ("qstat", FAKE_QSTAT), ("qdel", FAKE_QDEL)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(stat.S_IRWXU)
    environment = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(home),
        "RECORD": str(record),
        "QSTAT_XML": str(FIXTURES / "qstat_xml_empty.xml"),
        **env,
    }
    return subprocess.run(
        ["/bin/sh", "-s"], input=script, capture_output=True, text=True, env=environment, cwd=home, timeout=30
    )


NASTY = {
    "QUOTES": "it's \"quoted\" and 'single'",
    "SUBST": "$(touch PWNED_SUBST) ${HOME} $HOME",
    "TICKS": "`touch PWNED_TICKS`",
    "LINES": "first line\nsecond; touch PWNED_SEMI\n",
}
needs_flock = pytest.mark.skipif(shutil.which("flock") is None, reason="the submit script locks with flock")


@needs_flock
def test_nasty_env_values_reach_qsubs_environment_verbatim_and_never_its_command_line(tmp_path):
    spec = JobSpec(
        command="echo \"$QUOTES\" '$(touch PWNED_CMD)'",
        job_name='x"; touch PWNED_NAME; `id`',
        env_names=tuple(NASTY),
        working_dir="my dir/$(touch PWNED_WD)",
    )
    batch = sge.render_script(spec)
    result = run_locally(tmp_path, sge.submit_script(spec, batch, key=KEY, log_dir="logs", env=NASTY))
    assert result.returncode == 0, result.stderr
    assert sge.parse_submit_output(result.stdout).job_id == "777"

    record = tmp_path / "record"
    environment = dict(item.split("=", 1) for item in (record / "env").read_text().split("\0") if "=" in item)
    for name, value in NASTY.items():
        assert environment[name] == value
    argv = (record / "argv").read_text().split("\0")[:-1]
    assert argv[argv.index("-N") + 1] == "x___touch_PWNED_NAME___id_-3e3e187859dfa6450327-try2"
    assert argv[argv.index("-o") + 1] == f"{tmp_path}/home/logs/3e3e187859dfa6450327-$JOB_ID.log"
    assert argv[argv.index("-wd") + 1] == f"{tmp_path}/home/my dir/$(touch PWNED_WD)"
    assert argv[argv.index("-v") + 1] == "QUOTES,SUBST,TICKS,LINES"
    assert argv[argv.index("-S") + 1] == "/bin/bash"
    assert not any(value in " ".join(argv) for value in NASTY.values())
    assert (record / "script").read_text() == batch
    assert not list(tmp_path.rglob("PWNED*"))


@needs_flock
def test_adoption_finds_our_live_job_in_the_recorded_qstat_and_submits_nothing(tmp_path):
    spec = JobSpec(command="x", job_name="x")
    script = sge.submit_script(spec, "#!/bin/bash\n", key=SUBMIT_KEY, log_dir="logs", env={})
    result = run_locally(tmp_path, script, QSTAT_XML=str(FIXTURES / "qstat_xml_deleting.xml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ADOPTED {JOBS['submitted']}\n")
    assert not (tmp_path / "record" / "argv").exists()


@needs_flock
def test_a_job_being_deleted_or_watched_by_a_trigger_is_not_adopted(tmp_path):
    spec = JobSpec(command="x", job_name="x")
    script = sge.submit_script(spec, "#!/bin/bash\n", key=SUBMIT_KEY, log_dir="logs", env={})
    xml = recorded("qstat_xml_deleting.xml")
    # derived from the recording: our held job, shown with the state a qdel under way gives
    deleting = tmp_path / "deleting.xml"
    ours = re.compile(rf"(<JB_job_number>{JOBS['submitted']}</JB_job_number>.*?<state>)hqw<", re.DOTALL)
    deleting.write_text(ours.sub(r"\1dr<", xml, count=1))
    assert deleting.read_text() != xml
    result = run_locally(tmp_path, script, QSTAT_XML=str(deleting))
    assert result.stdout.startswith("SUBMITTED 777\n"), result.stderr

    (tmp_path / "home/logs").mkdir(parents=True, exist_ok=True)
    marker = sge.cursor_path("logs", SUBMIT_KEY, JOBS["submitted"]) + ".watched"
    (tmp_path / "home" / marker).touch()
    result = run_locally(tmp_path, script, QSTAT_XML=str(FIXTURES / "qstat_xml_deleting.xml"))
    assert result.stdout.startswith("SUBMITTED 777\n"), result.stderr


@needs_flock
def test_a_failing_qstat_stops_the_submission_instead_of_risking_a_duplicate(tmp_path):
    spec = JobSpec(command="x", job_name="x")
    script = sge.submit_script(spec, "#!/bin/bash\n", key=KEY, log_dir="logs", env={})
    result = run_locally(tmp_path, script, QSTAT_FAILS="1")
    assert result.returncode == 1
    assert "qstat exited 1" in result.stderr and "Connection refused" in result.stderr
    assert not (tmp_path / "record" / "argv").exists()


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_marks_every_job_then_deletes_them_all_in_one_qdel():
    script = sge.cancel_script(["12", "13"], "logs")
    assert_golden("cancel.sh", script)
    assert script.count("qdel ") == 1
    with pytest.raises(ValueError, match="not a Grid Engine job id"):
        sge.cancel_script(["12; rm -rf ~"], "logs")


@pytest.mark.parametrize(
    ("says", "exit_status", "succeeds"),
    [
        ('sgeuser has registered the job 12 for deletion\ndenied: job "13" does not exist', "1", True),
        ('denied: job "12" does not exist', "1", True),
        ('sgeuser - you do not have the necessary privileges to delete the job "12"', "1", False),
        ("error: commlib error: got select error (Connection refused)", "2", False),
    ],
)
def test_cancel_of_a_job_already_gone_succeeds_and_any_other_refusal_fails_with_qdels_words(
    tmp_path, says, exit_status, succeeds
):
    result = run_locally(tmp_path, sge.cancel_script(["12", "13"], "logs"), QDEL_SAYS=says, QDEL_EXIT=exit_status)
    assert (result.returncode == 0) is succeeds
    if not succeeds:
        assert says in result.stderr
    assert sorted(p.name for p in (tmp_path / "home/logs/cancelled").iterdir()) == ["12", "13"]


def test_the_recorded_cancel_of_running_pending_erring_and_finished_jobs_succeeded():
    assert recorded("cancel_output.txt") == "exit 0\n"


# --- polling: one qstat, qacct for the rest -------------------------------------------------------


def test_the_poll_asks_qstat_once_and_qacct_only_for_ids_qstat_no_longer_lists():
    script = sge.poll_script("T", ["12", "13"], [], LOG_DIR)
    assert script.count("qstat -xml") == 1
    assert 'for _j in $_jobs; do qacct -j "$_j"; done' in script  # once per job number
    assert "-v ids=12,13 " in script
    with pytest.raises(ValueError):
        sge.poll_script("T", ["12 13"], [], LOG_DIR)
    assert sge.SgeDialect(LOG_DIR).poll_script("T", [], []) == remote_shell.poll_script("T", "", [])


def test_recorded_queue_states_map_onto_shared_states_with_the_host():
    statuses = parse_qstat_xml(recorded("qstat_xml_states.xml"))
    expected = {
        "running": (JobState.RUNNING, "r", "vm"),
        "pending": (JobState.PENDING, "qw", None),
        "held": (JobState.HELD, "hqw", None),
        "eqw_output": (JobState.HELD, "Eqw", None),
        "eqw_shell": (JobState.HELD, "Eqw", None),
        "eqw_wd": (JobState.HELD, "Eqw", None),
        "suspended": (JobState.SUSPENDED, "s", "vm"),
        "pe2": (JobState.RUNNING, "r", "vm"),
        "array": (JobState.RUNNING, "r", "vm"),
    }
    for part, (state, native, host) in expected.items():
        status = statuses[JOBS[part]]
        assert (status.state, status.native_state, status.nodes) == (state, native, host), part
        assert status.exit_code is None
    assert "qmod -cj" in (statuses[JOBS["eqw_output"]].reason or "")


def test_a_recorded_qdel_under_way_is_completing_not_ended():
    status = parse_qstat_xml(recorded("qstat_xml_deleting.xml"))[JOBS["deleting"]]
    assert (status.state, status.native_state) == (JobState.COMPLETING, "dr")
    assert not status.state.is_terminal


def test_every_documented_state_is_mapped_none_is_terminal_and_an_unknown_one_is_unknown():
    assert len(SGE_STATES) == 33
    assert not any(state.is_terminal for state in SGE_STATES.values())
    xml = recorded("qstat_xml_states.xml").replace("<state>r</state>", "<state>zz</state>", 1)
    assert parse_qstat_xml(xml)[JOBS["running"]].state is JobState.UNKNOWN


def test_an_empty_recorded_queue_lists_nothing_and_garbage_is_an_error():
    assert parse_qstat_xml(recorded("qstat_xml_empty.xml")) == {}
    with pytest.raises(ValueError, match="no qstat XML"):
        parse_qstat_xml("error: commlib error: got select error (Connection refused)")
    with pytest.raises(ValueError, match="not readable"):
        parse_qstat_xml("<?xml version='1.0'?><job_info><job_list></job_info>")


def test_recorded_error_reasons_name_the_missing_file_shell_and_directory():
    reasons = parse_error_reasons(recorded("qstat_j_errors.txt"))
    assert 'can\'t open output file "/nonexistent/dir/out.log"' in reasons[JOBS["eqw_output"]]
    assert 'unable to find shell "/nonexistent/shell"' in reasons[JOBS["eqw_shell"]]
    assert "can't chdir to /nonexistent/dir" in reasons[JOBS["eqw_wd"]]


@pytest.mark.parametrize(
    ("part", "state", "exit_code", "signal", "reason"),
    [
        ("completed", JobState.COMPLETED, 0, None, None),
        ("exit3", JobState.FAILED, 3, None, None),
        ("exit137", JobState.FAILED, 137, None, None),  # failed 0: an exit code, not a signal
        ("selfterm", JobState.FAILED, 143, 15, "killed by signal 15"),
        ("running", JobState.FAILED, 137, 9, "a qdel, a memory limit or the kernel"),  # a qdel, not ours
        ("h_rt", JobState.TIMEOUT, 137, 9, "37: qmaster enforced h_rt"),
        ("h_rt_vmem", JobState.TIMEOUT, 137, 9, "37: qmaster enforced h_rt"),
        ("h_vmem", JobState.FAILED, 1, None, None),  # setrlimit: the job saw MemoryError and exited 1
        ("eqw_output", JobState.FAILED, None, None, "26: opening input/output file"),
        ("eqw_shell", JobState.FAILED, None, None, "27: searching requested shell"),
        ("eqw_wd", JobState.FAILED, None, None, "28: changing into working directory"),
        ("rescheduled", JobState.COMPLETED, 0, None, None),  # the last of its two records
        ("pe_done", JobState.COMPLETED, 0, None, None),
    ],
)
def test_recorded_accounting_records_map_to_final_states_and_success_needs_failed_0_and_exit_0(
    part, state, exit_code, signal, reason
):
    records, unknown, notices = parse_qacct(recorded(f"qacct_{part}.txt"))
    assert (unknown, notices) == (set(), [])
    status = status_from_record(records[JOBS[part]])
    assert (status.state, status.exit_code, status.signal) == (state, exit_code, signal)
    assert status.native_state == state.value and status.nodes == "vm"
    assert (status.reason is None) if reason is None else (reason in (status.reason or ""))


def test_a_rescheduled_jobs_first_run_is_requeued_and_its_last_record_wins():
    text = recorded("qacct_rescheduled.txt")
    assert text.count("jobnumber") == 2
    first = text[: text.index("\n=====") + 1]
    status = status_from_record(parse_qacct(first)[0][JOBS["rescheduled"]])
    assert status.state is JobState.REQUEUED and status.exit_code is None
    assert status_from_record(parse_qacct(text)[0][JOBS["rescheduled"]]).elapsed == timedelta(seconds=6)


def test_a_kill_or_a_failed_start_is_cancelled_when_this_provider_deleted_the_job_but_an_outcome_is_kept():
    def record(part: str) -> dict[str, str]:
        return parse_qacct(recorded(f"qacct_{part}.txt"))[0][JOBS[part]]

    assert status_from_record(record("running"), cancelled=True).state is JobState.CANCELLED
    assert status_from_record(record("eqw_output"), cancelled=True).state is JobState.CANCELLED
    assert status_from_record(record("completed"), cancelled=True).state is JobState.COMPLETED
    assert status_from_record(record("exit3"), cancelled=True).state is JobState.FAILED
    assert status_from_record(record("h_rt"), cancelled=True).state is JobState.TIMEOUT


def test_a_limit_kill_is_out_of_memory_when_only_memory_was_asked_for_and_ran_short_of_its_h_rt():
    record = parse_qacct(recorded("qacct_h_rt.txt"))[0][JOBS["h_rt"]]
    # derived from the recording: the same kill, with the categories other jobs would carry
    assert status_from_record({**record, "category": "-l h_vmem=1G"}).state is JobState.OUT_OF_MEMORY
    assert status_from_record({**record, "category": "-l h_rt=60,h_vmem=1G"}).state is JobState.OUT_OF_MEMORY
    assert status_from_record({**record, "category": "NONE"}).state is JobState.TIMEOUT  # a queue's h_rt


def test_a_record_without_failed_or_exit_status_is_a_failure_never_a_success():
    assert status_from_record({"jobnumber": "5", "exit_status": "0"}).state is JobState.FAILED
    assert status_from_record({"jobnumber": "5", "failed": "0"}).state is JobState.FAILED


def test_the_recorded_answer_for_a_job_deleted_while_pending_is_not_found():
    records, unknown, notices = parse_qacct(recorded("qacct_unknown_id.txt"))
    assert (records, unknown, notices) == ({}, {JOBS["pending"]}, ["qacct: exit 1"])


def test_maxrss_is_read_as_kib_printed_as_bytes_and_wallclock_in_any_of_its_forms():
    assert parse_maxrss_mb("307.902KB") == 307.9
    assert parse_maxrss_mb("4.387KB") == 4.4
    assert parse_maxrss_mb("0.000B") == 0.0
    assert parse_maxrss_mb("-") is None
    assert parse_seconds("30s") == timedelta(seconds=30)
    assert parse_seconds("4.000") == timedelta(seconds=4)
    assert parse_seconds("1:02:03") == timedelta(hours=1, minutes=2, seconds=3)
    assert parse_seconds("-/-") is None


def read(fixture: str, ids: list[str]):  # type: ignore[no-untyped-def]
    framed = remote_shell.parse_framed((FIXTURES / fixture).read_bytes(), POLL_TOKEN)
    return framed, sge.SgeDialect(LOG_DIR).read_poll(framed.sections, ids)


def test_a_recorded_live_poll_shows_running_pending_held_and_erring_jobs_the_output_and_an_unknown_id():
    ids = [JOBS[p] for p in ("running", "pending", "held", "eqw_output", "suspended")] + ["999999"]
    framed, report = read("poll_live.bin", ids)
    assert report.failure is None and report.notices == ()
    seen = {job_id: (o.status.state if o.status else None, o.final) for job_id, o in report.observations.items()}
    assert seen == {
        JOBS["running"]: (JobState.RUNNING, False),
        JOBS["pending"]: (JobState.PENDING, False),
        JOBS["held"]: (JobState.HELD, False),
        JOBS["eqw_output"]: (JobState.HELD, False),
        JOBS["suspended"]: (JobState.SUSPENDED, False),
        "999999": (None, False),  # absent: the poller's grace decides, never a success
    }
    erring = report.observations[JOBS["eqw_output"]].status
    assert erring is not None and "can't open output file" in (erring.reason or "")
    chunk = framed.chunks[JOBS["running"]]
    assert chunk.data.startswith(f"line 1 of job {JOBS['running']}\n".encode()) and chunk.data.endswith(b"\n")


def test_a_recorded_poll_after_the_end_reads_accounting_and_the_cancel_markers():
    parts = ("completed", "exit3", "h_rt", "running", "pending", "eqw_output")
    framed, report = read("poll_finished.bin", [JOBS[p] for p in parts] + ["999999"])
    assert report.failure is None and report.notices == ()
    seen = {job_id: (o.status.state if o.status else None, o.final) for job_id, o in report.observations.items()}
    assert seen == {
        JOBS["completed"]: (JobState.COMPLETED, True),  # cancelled after it had ended: its outcome stands
        JOBS["exit3"]: (JobState.FAILED, True),
        JOBS["h_rt"]: (JobState.TIMEOUT, True),
        JOBS["running"]: (JobState.CANCELLED, True),  # our qdel: 100, killed
        JOBS["pending"]: (JobState.CANCELLED, True),  # our qdel while pending: no record at all
        JOBS["eqw_output"]: (JobState.CANCELLED, True),  # our qdel of a job in error
        "999999": (None, False),
    }
    assert framed.chunks[JOBS["completed"]].data == b"hello\nworld\n"


def test_a_failed_or_missing_qstat_fails_the_whole_poll_and_concludes_nothing():
    dialect = sge.SgeDialect(LOG_DIR)
    refused = dialect.read_poll({"qstat": (1, "error: commlib error: got select error (Connection refused)")}, ["5"])
    assert refused.failure is not None and "qstat exited 1" in refused.failure and not refused.observations
    assert dialect.read_poll({}, ["5"]).failure == "the poll printed no qstat section"
    garbled = dialect.read_poll({"qstat": (0, "Segmentation fault")}, ["5"])
    assert garbled.failure is not None and not garbled.observations


def test_a_qacct_that_cannot_read_accounting_says_so_and_concludes_nothing():
    sections = {
        "qstat": (0, recorded("qstat_xml_empty.xml")),
        "qacct": (1, recorded("qacct_no_accounting_file.txt")),
        "cancelled": (0, ""),
    }
    report = sge.SgeDialect(LOG_DIR).read_poll(sections, [JOBS["completed"]])
    assert report.observations[JOBS["completed"]].status is None
    assert not report.observations[JOBS["completed"]].final
    assert "qacct: /nonexistent/accounting: No such file or directory" in report.notices
