"""Mapped PBS task instances as one job array: the array's script run by a real shell, the submit
script against stand-in qsub/qstat/squeue, the ids and the poll of elements, and the operator's
parse-time checks.

What the local wrappers cannot show (PBS Pro's ``-J`` answer ``123[].server``, its element ids,
``max_run_subjobs``) is checked here against the documented formats: tests/fixtures/pbs/README.md.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import pbs, pbs_array
from airflow_hpc_provider.dialects.array_elements import ArrayElement
from airflow_hpc_provider.dialects.pbs import PbsDialect
from airflow_hpc_provider.dialects.pbs_exits import exit_dir
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour, slurm_name
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobState
from airflow_hpc_provider.operators.pbs import PbsOperator
from tests.unit.stand_in_login import STAND_IN, StandInLogin

FIXTURES = Path(__file__).parents[1] / "fixtures"
LOG_DIR = "logs"
NASTY = 'it\'s "$(echo no)" `echo no` $HOME\\n\nsecond line'


def key(map_index: int, try_number: int = 1) -> JobKey:
    return JobKey.for_task_instance("dag", "mapped", "run1", map_index, try_number)


def elements(commands: list[str], env: list[dict[str, str]] | None = None) -> list[ArrayElement]:
    envs = env or [{} for _ in commands]
    return [ArrayElement(i, key(i), command, i, envs[i]) for i, command in enumerate(commands)]


def head(flavour: PbsFlavour = PbsFlavour.TORQUE) -> str:
    spec = JobSpec(command="", job_name="arr", setup=("echo setup ran",))
    return pbs.render_script(spec, flavour, exit_dir=exit_dir(LOG_DIR))


def run_element(tmp_path: Path, batch: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    (home / LOG_DIR).mkdir(parents=True, exist_ok=True)
    script = tmp_path / "array.pbs"
    script.write_text(batch)
    full = {"PATH": os.environ["PATH"], "HOME": str(home), **env}
    return subprocess.run(["bash", str(script)], env=full, capture_output=True, text=True, cwd=home, timeout=30)


def element_log(tmp_path: Path, element: ArrayElement) -> str:
    path = pbs.log_path(LOG_DIR, element.key.task_digest, element.key.try_number)
    return (tmp_path / "home" / path).read_text()


# --- the array's script ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "index_variable", ["PBS_ARRAYID", "PBS_ARRAY_INDEX", "SLURM_ARRAY_TASK_ID"], ids=["torque", "pbs_pro", "wrappers"]
)
def test_an_array_index_runs_the_element_the_submission_renumbered_into_its_own_log_with_its_own_env(
    tmp_path: Path, index_variable: str
) -> None:
    members = elements(
        ['echo "el0 $OWN"', 'echo "el1 $OWN"', 'echo "el2 $OWN"; printf "%s\\n" "$OWN"; exit 4'],
        [{"OWN": "zero"}, {"OWN": "one"}, {"OWN": NASTY}],
    )
    before, after = pbs_array.array_script_parts(head(), members, LOG_DIR)
    # Element 1 was adopted: the two left are array indexes 0 and 1, running elements 0 and 2.
    batch = before + "_airflow_hpc_elements='0 2'\n" + after
    carriers = {"_AHE_0_OWN": "zero", "_AHE_1_OWN": "one", "_AHE_2_OWN": NASTY}
    ids = {"PBS_JOBID": "77[1].server"} if index_variable != "SLURM_ARRAY_TASK_ID" else {"SLURM_ARRAY_JOB_ID": "77"}

    result = run_element(tmp_path, batch, {index_variable: "1", **carriers, **ids})

    assert result.returncode == 4, result.stderr
    log = element_log(tmp_path, members[2])
    assert log.splitlines() == ["setup ran", f"el2 {NASTY.splitlines()[0]}", NASTY.splitlines()[1], *NASTY.splitlines()]
    assert not (tmp_path / "home" / pbs.log_path(LOG_DIR, members[0].key.task_digest, 1)).exists()
    # Its exit is recorded under the id the provider knows it by: 77[1] (the wrappers' PBS_JOBID
    # is a raw Slurm id).
    assert (tmp_path / "home" / LOG_DIR / "exit" / "77[1]").read_text().strip() == "4"


def test_an_element_sees_no_carrier_and_no_array_index_and_is_not_refused_as_an_array(tmp_path: Path) -> None:
    members = elements(['env | grep -c "^_AHE_\\|ARRAY" || true'], [{"A": "x"}])
    before, after = pbs_array.array_script_parts(head(), [*members, *elements(["true", "true"])[1:]], LOG_DIR)
    batch = before + "_airflow_hpc_elements='0'\n" + after

    result = run_element(tmp_path, batch, {"PBS_ARRAYID": "0", "PBS_JOBID": "5[0].s", "_AHE_0_A": "x"})

    assert result.returncode == 0, result.stderr
    assert element_log(tmp_path, members[0]).splitlines() == ["setup ran", "0"]
    assert (tmp_path / "home" / LOG_DIR / "exit" / "5[0]").read_text().strip() == "0"


def test_a_script_that_cannot_record_its_exit_cannot_be_an_array() -> None:
    python = pbs.render_script(JobSpec(command="", job_name="p"), PbsFlavour.TORQUE, script="#!/usr/bin/env python3\n")
    assert not pbs_array.can_hold(python)
    with pytest.raises(ValueError, match="POSIX shell"):
        pbs_array.array_script_parts(python, elements(["true"]), LOG_DIR)


# --- the submit script ------------------------------------------------------------------------------


def pbs_login(tmp_path: Path) -> StandInLogin:
    login = StandInLogin(tmp_path, LOG_DIR)
    for name in ("qsub", "qstat"):
        (login.bin / name).write_text(STAND_IN)
        (login.bin / name).chmod(0o700)
    return login


def records(login: StandInLogin, element: ArrayElement) -> list[str]:
    path = login.home / pbs.jobs_record(LOG_DIR, element.key.task_digest)
    return path.read_text().splitlines() if path.exists() else []


def test_the_pbs_pro_submission_is_one_qsub_j_range_every_element_recorded_with_its_try_no_value_on_its_line(
    tmp_path: Path,
) -> None:
    login = pbs_login(tmp_path)
    login.answer("qsub", "4242[].pbsserver\n")
    members = elements(["echo a", "echo b", "echo c"], [{"SECRET": f"secret-value-{i}"} for i in range(3)])
    script = pbs_array.submit_script(
        PbsFlavour.PBS_PRO,
        head(PbsFlavour.PBS_PRO),
        members,
        job_name="arr",
        group="g" * 20,
        log_dir=LOG_DIR,
        env={"SHARED": "v"},
        throttle=2,
    )

    result = login.run(script)

    assert result.returncode == 0, result.stderr
    (call,) = login.calls("qsub")
    assert re.fullmatch(
        r"-N arr-gggggggggggg -o \S+/logs/arrays\.out -j oe -v SHARED,_AHE_0_SECRET,_AHE_1_SECRET,_AHE_2_SECRET "
        r"-S /bin/bash -J 0-2 -W max_run_subjobs=2 \S+/logs/array-\w+\.pbs",
        call,
    ), call
    assert "secret-value" not in call
    outcomes = pbs_array.parse_submit_output(result.stdout, members)
    assert [outcomes[i].job_id for i in range(3)] == ["4242[0].pbsserver", "4242[1].pbsserver", "4242[2].pbsserver"]
    assert [records(login, element) for element in members] == [[f"4242[{i}].pbsserver 1"] for i in range(3)]
    batch = next((login.home / LOG_DIR).glob("array-*.pbs")).read_text()
    assert "_airflow_hpc_elements='0 1 2'\n" in batch and "secret-value" not in batch


def test_a_lone_element_left_on_pbs_pro_is_a_job_of_its_own_and_the_adopted_keep_their_jobs(tmp_path: Path) -> None:
    login = pbs_login(tmp_path)
    login.answer("qsub", "4300.pbsserver\n")
    login.answer("qstat", "Job Id: 4242[0].pbsserver\n    job_state = R\n")
    members = elements(["echo a", "echo b"])
    (login.home / pbs.jobs_record(LOG_DIR, members[0].key.task_digest)).write_text("4242[0].pbsserver 1\n")
    script = pbs_array.submit_script(
        PbsFlavour.PBS_PRO,
        head(PbsFlavour.PBS_PRO),
        members,
        job_name="arr",
        group="g" * 20,
        log_dir=LOG_DIR,
        env={},
        throttle=2,
    )

    result = login.run(script)

    assert result.returncode == 0, result.stderr
    outcomes = pbs_array.parse_submit_output(result.stdout, members)
    assert (outcomes[0].job_id, outcomes[0].adopted, outcomes[0].state) == ("4242[0].pbsserver", True, "R")
    assert (outcomes[1].job_id, outcomes[1].adopted) == ("4300.pbsserver", False)
    (call,) = login.calls("qsub")
    assert "-J" not in call.split() and "-W" not in call.split()
    batch = next((login.home / LOG_DIR).glob("array-*.pbs")).read_text()
    assert "_airflow_hpc_elements='1'\n" in batch


def test_on_the_wrappers_an_element_of_this_try_is_adopted_by_slurms_word_even_once_watched(tmp_path: Path) -> None:
    login = pbs_login(tmp_path)
    login.answer("squeue", "R\n")
    members = elements(["echo a", "echo b"])
    for element, line in zip(members, ("901[0] 1\n", "901[1] 1\n"), strict=True):
        (login.home / pbs.jobs_record(LOG_DIR, element.key.task_digest)).write_text(line)
    (login.home / LOG_DIR / f"{members[1].key.task_digest}-try1.cursor.watched").write_text("")
    script = pbs_array.submit_script(
        PbsFlavour.TORQUE, head(), members, job_name="arr", group="g" * 20, log_dir=LOG_DIR, env={}
    )

    result = login.run(script)

    assert result.returncode == 0, result.stderr
    outcomes = pbs_array.parse_submit_output(result.stdout, members)
    assert [(outcomes[i].job_id, outcomes[i].adopted) for i in range(2)] == [("901[0]", True), ("901[1]", True)]
    assert login.calls("qsub") == []
    assert login.calls("squeue") == ["-h -r -t all -j 901_0 -o %t", "-h -r -t all -j 901_1 -o %t"]


def test_a_retry_never_adopts_an_earlier_tries_watched_element_and_submits_one_torque_array(tmp_path: Path) -> None:
    login = pbs_login(tmp_path)
    login.answer("squeue", "CD\n")
    login.answer("qsub", "77\n")
    (retry,) = [ArrayElement(0, key(2, try_number=2), "echo again", 2)]
    (login.home / pbs.jobs_record(LOG_DIR, retry.key.task_digest)).write_text("901[2] 1\n")
    (login.home / LOG_DIR / f"{retry.key.task_digest}-try1.cursor.watched").write_text("")
    script = pbs_array.submit_script(
        PbsFlavour.TORQUE, head(), [retry], job_name="arr", group="g" * 20, log_dir=LOG_DIR, env={}, throttle=3
    )

    result = login.run(script)

    assert result.returncode == 0, result.stderr
    outcome = pbs_array.parse_submit_output(result.stdout, [retry])[0]
    assert (outcome.job_id, outcome.adopted, outcome.try_number) == ("77[0]", False, 2)
    (call,) = login.calls("qsub")
    assert call.split()[-2:-1] == ["0-0%3"] and "-V" in call.split()
    assert records(login, retry) == ["901[2] 1", "77[0] 2"]


def test_a_submission_that_names_no_id_for_an_element_is_an_error() -> None:
    members = elements(["a", "b"])
    with pytest.raises(ValueError, match=r"no job id for array element\(s\) \[1\]"):
        pbs_array.parse_submit_output("SUBMITTED 0 12[0]\n", members)
    with pytest.raises(ValueError, match="unreadable"):
        pbs_array.parse_submit_output("SUBMITTED 0 12;rm\n", members)


# --- ids, polls and cancels -----------------------------------------------------------------------------


def test_only_the_wrappers_bare_element_ids_are_slurms_to_tell() -> None:
    assert slurm_name("10786[4]") == "10786_4"
    assert slurm_name("123[4].pbsserver") is None
    assert slurm_name("123") is None


def test_cancelling_a_wrapper_element_is_scancel_of_it_alone_never_qdel_of_the_array() -> None:
    torque = PbsDialect(PbsFlavour.TORQUE, LOG_DIR)
    assert torque.cancel_script(["10786[4]"]) == "scancel -- 10786_4\n"
    assert torque.cancel_script(["12.srv", "10786[4]"]) == "qdel 12.srv\nscancel -- 10786_4\n"
    assert PbsDialect(PbsFlavour.PBS_PRO, LOG_DIR).cancel_script(["123[4].pbsserver"]) == "qdel '123[4].pbsserver'\n"


def test_a_poll_of_wrapper_elements_asks_slurm_by_their_names_and_answers_under_pbs_ids() -> None:
    dialect = PbsDialect(PbsFlavour.TORQUE, LOG_DIR)
    watched = ["9331[0]", "9331[2]"]
    script = dialect.poll_script("TOKEN", watched, [])
    assert "qstat" not in script and "9331_0,9331_2" in script
    squeue = (FIXTURES / "slurm" / "squeue_elements_pending.txt").read_text()

    report = dialect.read_poll({"squeue": (0, squeue), "exits": (0, "")}, watched)

    assert report.failure is None
    states = {job_id: seen.status.state if seen.status else None for job_id, seen in report.observations.items()}
    assert states == {"9331[0]": JobState.RUNNING, "9331[2]": JobState.PENDING}
    assert all(seen.status and seen.status.job_id == job_id for job_id, seen in report.observations.items())


def test_a_pbs_pro_element_is_read_from_qstats_json_under_its_own_id() -> None:
    dialect = PbsDialect(PbsFlavour.PBS_PRO, LOG_DIR)
    text = (FIXTURES / "pbs" / "pbspro_qstat_x_f_json.json").read_text()
    report = dialect.read_poll({"qstat": (0, text), "qstat_stderr": (0, ""), "exits": (0, "")}, ["4110[1].pbsserver"])
    seen = report.observations["4110[1].pbsserver"]
    assert seen.status is not None and seen.status.job_id == "4110[1].pbsserver"


# --- the operator -----------------------------------------------------------------------------------------


def test_bad_array_arguments_fail_when_the_dag_is_parsed_also_in_partial() -> None:
    with pytest.raises(JobSpecError, match="array='yes'"):
        PbsOperator(task_id="t", command="true", array="yes")  # type: ignore[arg-type]
    with pytest.raises(JobSpecError, match="array_throttle=0"):
        PbsOperator.partial(task_id="t", array_throttle=0)
    with pytest.raises(JobSpecError, match="array_window"):
        PbsOperator.partial(task_id="t", array_window=-1)


def test_without_a_flavour_on_the_connection_an_instance_says_it_submits_a_job_of_its_own() -> None:
    operator = PbsOperator(task_id="t", command="true")
    assert operator.supports_arrays
    assert "flavour" in str(operator.why_no_array_element())
    operator._flavour = PbsFlavour.TORQUE
    assert operator.why_no_array_element() is None


class MappedTi:
    """What a mapped task instance's execute reads of its task instance."""

    dag_id, task_id, run_id, map_index, try_number = "d", "t", "r", 3, 1
    task = None  # no max_active_tis_per_dag(run)

    def get_ti_count(self, **_: object) -> int:
        return 20

    def xcom_push(self, **_: object) -> None:
        raise AssertionError("an element's id is known only in the triggerer")


def test_a_mapped_pbs_instance_defers_to_an_element_trigger_that_a_restarted_triggerer_can_rebuild(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_hpc_provider.triggers.pbs_array import PbsArrayElementTrigger

    connection = '{"conn_type": "pbs", "host": "login.invalid", "login": "u", "extra": {"flavour": "torque"}}'
    monkeypatch.setenv("AIRFLOW_CONN_PBS_ARRAYS", connection)
    operator = PbsOperator(
        task_id="t", pbs_conn_id="pbs_arrays", command="echo one", env={"OWN": "x"}, cpus=2, array_throttle=3
    )

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({"ti": MappedTi()})  # type: ignore[typeddict-item]

    trigger = deferred.value.trigger
    assert isinstance(trigger, PbsArrayElementTrigger)
    _, kwargs = trigger.serialize()
    rebuilt = PbsArrayElementTrigger(**kwargs)  # what a restarted triggerer does with the stored row
    assert (rebuilt.flavour, rebuilt.job_id, rebuilt.element["map_index"]) == ("torque", "", 3)
    assert rebuilt.element["command"] == "echo one" and rebuilt.element["env"] == [["OWN", "x"]]
    assert rebuilt.element["throttle"] == 3 and rebuilt.element["expected"] == 20
    assert pbs_array.can_hold(rebuilt.element["head"]) and "#PBS -l nodes=1:ppn=2" in rebuilt.element["head"]
    assert "echo one" not in rebuilt.element["head"]


@pytest.mark.parametrize(
    ("program", "answer", "size"),
    [
        ("qmgr", "Server pbsserver\n    server_state = Active\n    max_array_size = 10000\n", 10000),
        ("qmgr", "Server torque.example\n    max_job_array_size = 500\n", 500),
        ("scontrol", "MaxArraySize            = 6\nMaxJobCount             = 200000\n", 6),
    ],
    ids=["pbs_pro", "torque", "wrappers"],
)
def test_the_largest_array_is_read_from_the_servers_own_limit(
    tmp_path: Path, program: str, answer: str, size: int
) -> None:
    login = pbs_login(tmp_path)
    (login.bin / program).write_text(STAND_IN)
    (login.bin / program).chmod(0o700)
    login.answer(program, answer)

    result = login.run(pbs_array.MAX_ARRAY_SIZE_SCRIPT)

    assert pbs_array.parse_max_array_size(result.stdout) == size
    assert pbs_array.parse_max_array_size("") is None


def test_on_the_wrappers_an_ended_element_squeue_forgot_is_adopted_by_slurms_accounting_not_run_again(
    tmp_path: Path,
) -> None:
    login = pbs_login(tmp_path)
    login.answer("squeue", "")
    login.answer("sacct", "COMPLETED\n")
    (member,) = elements(["echo a"])
    (login.home / pbs.jobs_record(LOG_DIR, member.key.task_digest)).write_text("901[0] 1\n")
    script = pbs_array.submit_script(
        PbsFlavour.TORQUE, head(), [member], job_name="arr", group="g" * 20, log_dir=LOG_DIR, env={}
    )

    result = login.run(script)

    assert result.returncode == 0, result.stderr
    outcome = pbs_array.parse_submit_output(result.stdout, [member])[0]
    assert (outcome.job_id, outcome.adopted, outcome.ended) == ("901[0]", True, True)
    assert login.calls("qsub") == []


def test_a_qsub_that_prints_no_id_fails_the_submission_and_records_nothing(tmp_path: Path) -> None:
    login = pbs_login(tmp_path)
    login.answer("qsub", "")
    (member,) = elements(["echo a"])
    script = pbs_array.submit_script(
        PbsFlavour.TORQUE, head(), [member], job_name="arr", group="g" * 20, log_dir=LOG_DIR, env={}
    )

    result = login.run(script)

    assert result.returncode == 1 and "qsub printed no job id" in result.stderr
    assert records(login, member) == []
