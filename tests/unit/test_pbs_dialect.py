"""The PBS dialect against golden files, recorded wrapper output and hand-written PBS Pro output.

No cluster and no mocks: the submit script's quoting is proven by running it with /bin/sh against
stand-in qsub/qstat programs that record what they receive.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import pbs, pbs_qstat, pbs_submit, remote_shell
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.errors import ConnectionConfigError, JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobState, JobStatus, Resources

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pbs"
KEY = JobKey(task_digest="3e3e187859dfa6450327", try_number=2)
# The key of the job recorded on the test cluster.
RECORDED_KEY = JobKey(task_digest="9e9d6ae961e6cad81a88", try_number=1)

FULL_SPEC = JobSpec(
    command="python train.py --epochs 3",
    job_name="train model",
    resources=Resources(
        partition="gpuq",
        account="proj42",
        nodes=2,
        cpus=8,
        memory_mb=4096,
        time_limit=timedelta(days=1, hours=12, minutes=30, seconds=5),
        gpus=1,
    ),
    env_names=("DATA_URL", "API_TOKEN"),
    setup=("module load python/3.11",),
    login_shell=True,
    working_dir="runs/today",
    extra_directives=("-l place=scatter",),
)


def golden(name: str) -> str:
    return (FIXTURES / name).read_text()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def normalised(script: str) -> str:
    return re.sub(r"AIRFLOW_HPC_EOF_[0-9a-f]{16}", "AIRFLOW_HPC_EOF_X", script)


# --- rendering ----------------------------------------------------------------------------------


def test_pbs_pro_script_asks_for_one_select_chunk_per_node_and_walltime_in_hours():
    assert pbs.render_script(FULL_SPEC, PbsFlavour.PBS_PRO) == golden("render_pbs_pro_full.golden")


def test_torque_script_asks_for_nodes_ppn_gpus_and_the_whole_jobs_memory():
    assert pbs.render_script(FULL_SPEC, PbsFlavour.TORQUE) == golden("render_torque_full.golden")


def test_a_bare_spec_renders_a_plain_bash_script_with_no_directives():
    spec = JobSpec(command="echo hi", job_name="x")
    assert pbs.render_script(spec, PbsFlavour.PBS_PRO) == "#!/bin/bash\necho hi\n"


def test_a_users_script_keeps_its_shebang_and_directives_and_gets_setup_after_them():
    user_script = "#!/bin/zsh\n#PBS -l place=pack\n\nprint hello\n"
    spec = JobSpec(
        command="", job_name="x", resources=Resources(time_limit=timedelta(minutes=5)), setup=("source env.sh",)
    )
    assert pbs.render_script(spec, PbsFlavour.PBS_PRO, script=user_script) == (
        "#!/bin/zsh\n#PBS -l walltime=00:05:00\n#PBS -l place=pack\n\nsource env.sh\nprint hello\n"
    )


def test_walltime_counts_hours_past_a_day_because_pbs_has_no_day_field():
    assert pbs.pbs_walltime(timedelta(days=2, minutes=1, seconds=2)) == "48:01:02"


def test_a_slurm_gres_request_is_refused_rather_than_dropped():
    spec = JobSpec(command="x", job_name="x", resources=Resources(gres="gpu:a100:2"))
    with pytest.raises(JobSpecError, match="gres"):
        pbs.render_script(spec, PbsFlavour.PBS_PRO)


def test_a_queue_list_is_refused_because_a_pbs_job_goes_to_one_queue():
    spec = JobSpec(command="x", job_name="x", resources=Resources(partition="a,b"))
    with pytest.raises(JobSpecError, match="one queue"):
        pbs.render_script(spec, PbsFlavour.TORQUE)


@pytest.mark.parametrize("directive", ["-N other", "-o /tmp/x", "-V", "-v A=1", "-j oe", "-l x\n-N y"])
def test_extra_directives_may_not_take_over_the_options_the_provider_owns(directive):
    spec = JobSpec(command="x", job_name="x", extra_directives=(directive,))
    with pytest.raises(JobSpecError):
        pbs.render_script(spec, PbsFlavour.PBS_PRO)


# --- names, keys, submission --------------------------------------------------------------------


def test_the_job_name_carries_the_task_digest_and_try_in_characters_no_shell_reads():
    spec = JobSpec(command="x", job_name='9 we"ird $(x) `y`; name that goes on and on and on')
    name = pbs.job_name(spec, KEY)
    assert name == "j9_we_ird___x___y___name_that_go-3e3e187859dfa6450327-try2"
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name)


def test_the_pbs_pro_submit_script_passes_env_names_only_and_writes_the_script_to_a_file():
    spec = JobSpec(command="echo hi", job_name="etl", env_names=("DATA_URL",))
    script = pbs.render_script(spec, PbsFlavour.PBS_PRO)
    submit = pbs_submit.submit_script(
        spec, script, PbsFlavour.PBS_PRO, key=KEY, log_dir="airflow-logs", env={"DATA_URL": "s3://bucket/x"}
    )
    assert normalised(submit) == golden("submit_pbs_pro.golden")


def test_the_torque_submit_script_exports_the_whole_environment_with_dash_capital_v():
    spec = JobSpec(command="echo hi", job_name="etl", env_names=("DATA_URL",))
    script = pbs.render_script(spec, PbsFlavour.TORQUE)
    submit = pbs_submit.submit_script(
        spec, script, PbsFlavour.TORQUE, key=KEY, log_dir="/scratch/airflow", env={"DATA_URL": "s3://bucket/x"}
    )
    assert normalised(submit) == golden("submit_torque.golden")
    qsub_line = next(line for line in submit.splitlines() if "$(qsub " in line)
    assert " -V " in qsub_line and " -v " not in qsub_line


def test_a_log_dir_the_wrappers_shell_would_misread_is_refused():
    spec = JobSpec(command="x", job_name="x")
    with pytest.raises(ConnectionConfigError, match="log directory"):
        pbs_submit.submit_script(spec, "#!/bin/sh\n", PbsFlavour.TORQUE, key=KEY, log_dir="logs; rm -rf ~", env={})


def test_a_recorded_fresh_submission_on_the_wrapper_yields_its_bare_id():
    outcome = pbs_submit.parse_submit_output(golden("torque_submit_fresh.out"))
    assert (outcome.job_id, outcome.adopted, outcome.state, outcome.try_number) == ("14", False, "Q", 1)
    assert "-S is ignored" in golden("torque_submit_fresh.err")


def test_a_recorded_second_run_adopts_the_live_job_instead_of_submitting_again():
    outcome = pbs_submit.parse_submit_output(golden("torque_submit_adopted.out"))
    assert (outcome.job_id, outcome.adopted, outcome.state) == ("14", True, "R")
    assert pbs.log_path("logs", RECORDED_KEY.task_digest, outcome.try_number) == ("logs/9e9d6ae961e6cad81a88-try1.log")


def test_a_recorded_second_submission_reads_as_a_new_job_not_an_adopted_one():
    outcome = pbs_submit.parse_submit_output(golden("torque_submit_after_finish.out"))
    assert (outcome.job_id, outcome.adopted, outcome.ended) == ("16", False, False)


def test_an_adopted_job_in_a_finished_state_is_told_apart_from_a_live_one():
    assert pbs_submit.parse_submit_output("ADOPTED 14 1\nSTATE C\n").ended
    assert not pbs_submit.parse_submit_output("ADOPTED 14 1\nSTATE R\n").ended


def test_submit_output_without_an_id_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="no job id"):
        pbs_submit.parse_submit_output("SUBMITTED There was an error running the Slurm sbatch command. 1\n")


def test_cancel_is_one_qdel_for_all_ids_and_refuses_what_is_not_a_job_id():
    assert pbs.cancel_script(["12", "4110[].pbsserver"]) == "qdel 12 '4110[].pbsserver'\n"
    with pytest.raises(ValueError):
        pbs.cancel_script(["12; rm -rf ~"])


# --- the submit script, executed locally --------------------------------------------------------

NASTY = {
    "QUOTES": "it's \"quoted\" and 'single'",
    "SUBST": "$(touch PWNED_SUBST) ${HOME} $HOME",
    "TICKS": "`touch PWNED_TICKS`",
    "LINES": "first line\nsecond; touch PWNED_SEMI\n",
    "SEMI": "a; touch PWNED_SEMI2 && echo b | cat",
}

# Stand-in qsub: records its argv (NUL-separated) and its whole environment, prints an id.
FAKE_QSUB = """#!/bin/sh
for a in "$@"; do printf '%s\\0' "$a"; done > "$RECORD/argv"
env -0 > "$RECORD/env"
eval "last=\\${$#}"
cp -- "$last" "$RECORD/script"
echo "some warning first"
if [ -n "$QSUB_SILENT" ]; then exit 0; fi
echo 777.server
"""
# Stand-in qstat: records its arguments; no jobs known (as the wrapper: nothing, exit 153), or
# the recorded file given, or a failure (QSTAT_FAIL).
FAKE_QSTAT = """#!/bin/sh
printf '%s\\n' "$*" >> "$RECORD/qstat_args"
if [ -n "$QSTAT_FAIL" ]; then echo 'qstat: cannot connect to server' >&2; exit 2; fi
if [ -n "$QSTAT_OUTPUT" ]; then cat -- "$QSTAT_OUTPUT"; exit 0; fi
exit 153
"""


def run_submit(
    tmp_path: Path,
    script: str,
    qstat_output: Path | None = None,
    *,
    qstat_fails: bool = False,
    qsub_prints_no_id: bool = False,
) -> subprocess.CompletedProcess[str]:
    bindir = tmp_path / "bin"
    record = tmp_path / "record"
    home = tmp_path / "home"
    for directory in (bindir, record, home):
        directory.mkdir(exist_ok=True)
    for name, text in (("qsub", FAKE_QSUB), ("qstat", FAKE_QSTAT)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(stat.S_IRWXU)
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(home),
        "RECORD": str(record),
        "QSTAT_OUTPUT": str(qstat_output or ""),
        "QSTAT_FAIL": "1" if qstat_fails else "",
        "QSUB_SILENT": "1" if qsub_prints_no_id else "",
    }
    return subprocess.run(
        ["/bin/sh", "-s"], input=script, capture_output=True, text=True, env=env, cwd=home, timeout=30, check=False
    )


@pytest.mark.skipif(shutil.which("flock") is None, reason="the submit script locks with flock")
@pytest.mark.parametrize("flavour", list(PbsFlavour))
def test_nasty_env_values_and_job_names_arrive_verbatim_and_execute_nothing(tmp_path, flavour):
    spec = JobSpec(
        command="echo \"$QUOTES\" '$(touch PWNED_CMD)'", job_name='x"; touch PWNED_NAME; `id`', env_names=tuple(NASTY)
    )
    batch = pbs.render_script(spec, flavour)
    result = run_submit(tmp_path, pbs_submit.submit_script(spec, batch, flavour, key=KEY, log_dir="logs", env=NASTY))
    assert result.returncode == 0, result.stderr
    outcome = pbs_submit.parse_submit_output(result.stdout)
    assert (outcome.job_id, outcome.adopted, outcome.try_number) == ("777.server", False, 2)

    record = tmp_path / "record"
    environment = dict(item.split("=", 1) for item in (record / "env").read_text().split("\0") if "=" in item)
    for name, value in NASTY.items():
        assert environment[name] == value
    assert environment["AIRFLOW_HPC_KEY"] == KEY.tag
    argv = (record / "argv").read_text().split("\0")[:-1]
    assert argv[argv.index("-N") + 1] == "x___touch_PWNED_NAME___id_-3e3e187859dfa6450327-try2"
    assert argv[argv.index("-o") + 1] == f"{tmp_path}/home/logs/3e3e187859dfa6450327-try2.log"
    assert argv[-1] == f"{tmp_path}/home/logs/3e3e187859dfa6450327-try2.pbs"
    if flavour is PbsFlavour.PBS_PRO:
        assert argv[argv.index("-v") + 1] == "AIRFLOW_HPC_KEY,QUOTES,SUBST,TICKS,LINES,SEMI"
    else:
        assert "-V" in argv and "-v" not in argv
    assert not any(value in " ".join(argv) for value in NASTY.values())
    assert (record / "script").read_text() == batch
    assert not list(tmp_path.rglob("PWNED*"))


def record_jobs(tmp_path: Path, log_dir: str, digest: str, *lines: str) -> None:
    home = tmp_path / "home"
    (home / log_dir).mkdir(parents=True, exist_ok=True)
    (home / log_dir / f"{digest}.jobs").write_text("".join(f"{line}\n" for line in lines))


@pytest.mark.skipif(shutil.which("flock") is None, reason="the submit script locks with flock")
def test_a_retry_asks_qstat_about_the_recorded_jobs_only_and_adopts_the_newest_live_one(tmp_path):
    key = RECORDED_KEY
    record_jobs(tmp_path, "logs", key.task_digest, "15 1", "14 1")
    script = pbs_submit.submit_script(
        JobSpec(command="x", job_name="x"), "#!/bin/sh\n", PbsFlavour.TORQUE, key=key, log_dir="logs", env={}
    )
    result = run_submit(tmp_path, script, qstat_output=FIXTURES / "torque_qstat_f_running_and_held.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ADOPTED 14 1\nSTATE R\n"
    assert (tmp_path / "record" / "qstat_args").read_text() == "-f 14 15\n"
    assert not (tmp_path / "record" / "argv").exists()


@pytest.mark.skipif(shutil.which("flock") is None, reason="the submit script locks with flock")
def test_a_recorded_job_a_trigger_watched_is_never_adopted(tmp_path):
    key = RECORDED_KEY
    record_jobs(tmp_path, "logs", key.task_digest, "14 1")
    (tmp_path / "home" / "logs" / f"{key.task_digest}-try1.cursor.watched").write_text("")
    script = pbs_submit.submit_script(
        JobSpec(command="x", job_name="x"), "#!/bin/sh\n", PbsFlavour.TORQUE, key=key, log_dir="logs", env={}
    )
    result = run_submit(tmp_path, script, qstat_output=FIXTURES / "torque_qstat_f_running_and_held.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SUBMITTED 777.server 1\n")
    assert not (tmp_path / "record" / "qstat_args").read_text().startswith("-f 14")


@pytest.mark.skipif(shutil.which("flock") is None, reason="the submit script locks with flock")
def test_a_finished_job_qstat_forgot_is_adopted_when_its_script_recorded_how_it_ended(tmp_path):
    key = RECORDED_KEY
    record_jobs(tmp_path, "logs", key.task_digest, "21 1")
    (tmp_path / "home" / "logs" / "exit").mkdir()
    (tmp_path / "home" / "logs" / "exit" / "21").write_text("3\n")
    script = pbs_submit.submit_script(
        JobSpec(command="x", job_name="x"), "#!/bin/sh\n", PbsFlavour.TORQUE, key=key, log_dir="logs", env={}
    )
    result = run_submit(tmp_path, script)  # qstat knows nothing: exit 153
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ADOPTED 21 1\nSTATE F\n"
    assert pbs_submit.parse_submit_output(result.stdout).ended


@pytest.mark.skipif(shutil.which("flock") is None, reason="the submit script locks with flock")
def test_a_job_gone_without_a_trace_is_submitted_again_and_recorded_before_its_id_is_printed(tmp_path):
    key = RECORDED_KEY
    record_jobs(tmp_path, "logs", key.task_digest, "21 1")
    script = pbs_submit.submit_script(
        JobSpec(command="x", job_name="x"), "#!/bin/sh\n", PbsFlavour.TORQUE, key=key, log_dir="logs", env={}
    )
    result = run_submit(tmp_path, script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SUBMITTED 777.server 1\n")
    assert (tmp_path / "home" / "logs" / f"{key.task_digest}.jobs").read_text() == "21 1\n777.server 1\n"


@pytest.mark.skipif(shutil.which("flock") is None, reason="the submit script locks with flock")
def test_a_qsub_that_prints_no_id_fails_the_submission_saying_what_it_printed_and_records_nothing(tmp_path):
    spec = JobSpec(command="x", job_name="x")
    script = pbs_submit.submit_script(spec, "#!/bin/sh\n", PbsFlavour.TORQUE, key=KEY, log_dir="logs", env={})
    result = run_submit(tmp_path, script, qsub_prints_no_id=True)
    assert result.returncode == 1
    assert "qsub printed no job id: some warning first" in result.stderr
    assert "SUBMITTED" not in result.stdout
    assert not (tmp_path / "home" / "logs" / f"{KEY.task_digest}.jobs").exists()


@pytest.mark.skipif(shutil.which("flock") is None, reason="the submit script locks with flock")
def test_a_failing_qstat_stops_the_submission_instead_of_risking_a_duplicate(tmp_path):
    record_jobs(tmp_path, "logs", KEY.task_digest, "14 2")
    spec = JobSpec(command="x", job_name="x")
    script = pbs_submit.submit_script(spec, "#!/bin/sh\n", PbsFlavour.PBS_PRO, key=KEY, log_dir="logs", env={})
    result = run_submit(tmp_path, script, qstat_fails=True)
    assert result.returncode == 1
    assert "qstat exited 2" in result.stderr
    assert not (tmp_path / "record" / "argv").exists()


@pytest.mark.skipif(shutil.which("flock") is None, reason="the submit script locks with flock")
def test_a_first_submission_asks_qstat_nothing(tmp_path):
    script = pbs_submit.submit_script(
        JobSpec(command="x", job_name="x"), "#!/bin/sh\n", PbsFlavour.PBS_PRO, key=KEY, log_dir="logs", env={}
    )
    result = run_submit(tmp_path, script)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "record" / "qstat_args").read_text() == "-f 777.server\n"  # only the new job's state


# --- polling: the Torque wrapper, recorded ------------------------------------------------------


def poll(fixture: str, token: str, ids: list[str], flavour: PbsFlavour = PbsFlavour.TORQUE) -> pbs_qstat.PbsPoll:
    framed = remote_shell.parse_framed(fixture_bytes(fixture), token)
    return pbs_qstat.parse_poll(framed.sections, ids, flavour)


def test_the_poll_is_one_qstat_for_all_ids_with_stderr_kept_apart():
    script = pbs_qstat.poll_script("T", ["12", "13.srv"], [], PbsFlavour.PBS_PRO)
    assert len(re.findall(r"\bqstat -", script)) == 1
    assert "qstat -x -f -F json 12 13.srv" in script
    assert "qstat -f 12 13.srv" in pbs_qstat.poll_script("T", ["12", "13.srv"], [], PbsFlavour.TORQUE)


def test_recorded_running_and_held_jobs_are_running_and_pending_and_the_unknown_id_is_absent():
    token = "AIRFLOW_HPC_rec0000000000000001"
    result = poll("torque_poll_running_held_unknown.out", token, ["14", "15", "999999"])
    running, held = result.statuses["14"], result.statuses["15"]
    assert (running.state, running.nodes, running.exit_code) == (JobState.RUNNING, "vm", None)
    # The wrapper shows a qsub -h job as Q: it cannot be told from a queued one.
    assert held.state is JobState.PENDING
    assert "999999" not in result.statuses
    assert result.errors == ()
    framed = remote_shell.parse_framed(fixture_bytes("torque_poll_running_held_unknown.out"), token)
    chunk = framed.chunks["14"]
    assert chunk.data == b"hello it's $(not run) `nope`; ok\nkey airflow-hpc:9e9d6ae961e6cad81a88:try1\n"


def test_recorded_finished_jobs_without_an_exit_status_are_never_a_success():
    result = poll("torque_poll_completed_cancelled.out", "AIRFLOW_HPC_rec0000000000000002", ["14", "15"])
    for job_id in ("14", "15"):
        status = result.statuses[job_id]
        assert status.state is JobState.FAILED
        assert not status.state.is_success
        assert status.exit_code is None
        assert status.reason is not None and "no exit status" in status.reason


def test_a_recorded_job_cancelled_while_running_reads_as_finished_with_unknown_outcome():
    result = poll("torque_poll_cancelled_running.out", "AIRFLOW_HPC_rec0000000000000003", ["16"])
    assert result.statuses["16"].state is JobState.FAILED
    assert result.statuses["16"].native_state == "C"


def test_a_recorded_poll_of_only_unknown_ids_reports_them_absent_without_an_error():
    result = poll("torque_poll_unknown_only.out", "AIRFLOW_HPC_rec0000000000000004", ["999999"])
    assert result.statuses == {}
    assert result.unknown_ids == ("999999",)
    assert result.errors == ()


def test_real_torque_exit_statuses_map_walltime_memory_and_qdel():
    statuses = pbs_qstat.parse_qstat_full(golden("torque_qstat_f_handwritten.txt"), PbsFlavour.TORQUE)
    done = statuses["212.head.cluster"]
    assert (done.state, done.exit_code, done.nodes) == (JobState.COMPLETED, 0, "n01,n02")
    assert done.elapsed == timedelta(minutes=1, seconds=5)
    assert done.max_rss_mb == 3.0
    assert statuses["213.head.cluster"].state is JobState.TIMEOUT
    assert statuses["214.head.cluster"].state is JobState.OUT_OF_MEMORY
    qdeleted = statuses["215.head.cluster"]
    assert (qdeleted.state, qdeleted.signal) == (JobState.CANCELLED, 15)
    waiting = statuses["216.head.cluster"]
    assert waiting.state is JobState.PENDING
    assert waiting.reason == ("job waits for its start time and the comment is long enough to wrap onto a second line")


# --- polling: PBS Pro JSON, written from the documented format ----------------------------------


def pbs_pro_statuses() -> dict[str, JobStatus]:
    return pbs_qstat.parse_qstat_json(golden("pbspro_qstat_x_f_json.json"), PbsFlavour.PBS_PRO)


def test_pbs_pro_running_job_shows_its_hosts_use_and_no_exit_code():
    running = pbs_pro_statuses()["4101.pbsserver"]
    assert (running.state, running.nodes, running.exit_code) == (JobState.RUNNING, "cn017", None)
    assert running.elapsed == timedelta(minutes=10, seconds=2)
    assert running.max_rss_mb == 2048.0
    assert running.describe().startswith("RUNNING (R) on cn017")


@pytest.mark.parametrize(
    ("job_id", "state", "exit_code", "signal"),
    [
        ("4102.pbsserver", JobState.COMPLETED, 0, None),
        ("4103.pbsserver", JobState.TIMEOUT, -29, None),
        ("4104.pbsserver", JobState.CANCELLED, 271, 15),
        ("4105.pbsserver", JobState.CANCELLED, None, None),
        ("4106.pbsserver", JobState.OUT_OF_MEMORY, -27, None),
        ("4107.pbsserver", JobState.FAILED, 3, None),
        ("4108.pbsserver", JobState.PENDING, None, None),
        ("4109.pbsserver", JobState.HELD, None, None),
        ("4110[].pbsserver", JobState.RUNNING, None, None),
        ("4110[1].pbsserver", JobState.COMPLETED, 0, None),
        ("4111.pbsserver", JobState.FAILED, 265, 9),
        ("4112.pbsserver", JobState.COMPLETING, None, None),
        ("4113.pbsserver", JobState.FAILED, None, None),
        ("4114.pbsserver", JobState.LOST, None, None),
        ("4115.pbsserver", JobState.UNKNOWN, None, None),
    ],
)
def test_pbs_pro_states_and_exit_statuses_map_onto_shared_states(job_id, state, exit_code, signal):
    status = pbs_pro_statuses()[job_id]
    assert (status.state, status.exit_code, status.signal) == (state, exit_code, signal)


def test_minus_eleven_is_a_rerun_on_pbs_pro_but_a_walltime_kill_on_torque():
    pro, _, _ = pbs_qstat.map_state("F", -11, None, PbsFlavour.PBS_PRO)
    torque, _, _ = pbs_qstat.map_state("C", -11, None, PbsFlavour.TORQUE)
    assert (pro, torque) == (JobState.FAILED, JobState.TIMEOUT)


def test_a_pbs_pro_poll_matches_ids_and_lists_the_ones_qstat_does_not_know():
    sections = {
        "qstat": (153, golden("pbspro_qstat_x_f_json.json")),
        "qstat_stderr": (0, "qstat: Unknown Job Id 4199.pbsserver"),
    }
    result = pbs_qstat.parse_poll(
        sections, ["4101.pbsserver", "4110[].pbsserver", "4199.pbsserver"], PbsFlavour.PBS_PRO
    )
    assert set(result.statuses) == {"4101.pbsserver", "4110[].pbsserver"}
    assert result.unknown_ids == ("4199.pbsserver",)
    assert result.errors == ()


def test_an_id_without_its_server_suffix_still_finds_its_job():
    sections = {"qstat": (0, golden("pbspro_qstat_x_f_json.json")), "qstat_stderr": (0, "")}
    result = pbs_qstat.parse_poll(sections, ["4107"], PbsFlavour.PBS_PRO)
    assert result.statuses["4107"].job_id == "4107"
    assert result.statuses["4107"].exit_code == 3


def test_unreadable_json_is_an_error_and_says_nothing_about_any_job():
    sections = {"qstat": (0, '{"Jobs": {"1.s": {"job_state": "F", "Exit_status": 0'), "qstat_stderr": (0, "")}
    result = pbs_qstat.parse_poll(sections, ["1.s"], PbsFlavour.PBS_PRO)
    assert result.statuses == {}
    assert result.errors and "not readable" in result.errors[0]


def test_json_with_a_raw_tab_inside_a_string_is_still_read():
    text = '{"Jobs": {"1.s": {"job_state": "F", "Exit_status": 0, "comment": "a\tb"}}}'
    assert pbs_qstat.parse_qstat_json(text)["1.s"].state is JobState.COMPLETED


def test_a_server_failure_is_reported_as_an_error():
    stderr = "Connection refused\nqstat: cannot connect to server pbs1"
    sections = {"qstat": (2, ""), "qstat_stderr": (0, stderr)}
    result = pbs_qstat.parse_poll(sections, ["1.pbs1"], PbsFlavour.PBS_PRO)
    assert result.statuses == {}
    assert any("cannot connect" in error for error in result.errors)
    assert any("exited 2" in error for error in result.errors)


def test_the_pbs_pro_text_form_parses_like_the_json_form():
    statuses = pbs_qstat.parse_qstat_full(golden("pbspro_qstat_x_f.txt"), PbsFlavour.PBS_PRO)
    assert statuses["4101.pbsserver"].state is JobState.RUNNING
    assert statuses["4101.pbsserver"].reason == ("Job run at Fri Nov 20 at 09:12 on (cn017:ncpus=4:mem=4194304kb)")
    assert statuses["4104.pbsserver"].state is JobState.COMPLETED


def test_the_recorded_wrapper_text_has_tab_indented_attributes_and_no_exit_status():
    statuses = pbs_qstat.parse_qstat_full(golden("torque_qstat_f_running_and_held.txt"))
    assert statuses["14"].state is JobState.RUNNING
    assert statuses["15"].native_state == "Q"


def test_a_status_round_trips_through_its_dict_form():
    status = pbs_pro_statuses()["4103.pbsserver"]
    assert JobStatus.from_dict(status.to_dict()) == status


def test_stand_in_programs_are_executable_here():
    # Guards the quoting tests above against silently testing nothing on an odd machine.
    assert os.access("/bin/sh", os.X_OK)
