"""Grid Engine arrays of mapped task instances, the pure parts: reading qstat, qacct and the poll
about elements (output recorded on the real Grid Engine, tests/fixtures/sge/arrays_*), the array's
batch script run by bash, and the submit script run by /bin/sh against stand-in qstat/qacct/qsub.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import remote_shell, sge, sge_array
from airflow_hpc_provider.dialects.array_elements import ArrayElement, split_env
from airflow_hpc_provider.dialects.sge_status import in_task_list, parse_qacct, parse_queue, status_from_record
from airflow_hpc_provider.jobs import JobKey, JobState
from tests.unit.stand_in_login import StandInLogin

FIXTURES = Path(__file__).parents[1] / "fixtures" / "sge"
JOBS = json.loads((FIXTURES / "arrays_jobs.json").read_text())
ARRAY = JOBS["array"]
LOG_DIR = "fixrec/arrays"
POLL_TOKEN = "AIRFLOW_HPC_5ge0fixture000002"


def recorded(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- reading Grid Engine's answers about elements ----------------------------------------------------


def test_a_task_list_holds_its_ranges_steps_and_single_tasks() -> None:
    assert [task for task in range(1, 14) if in_task_list(task, "1-5:2,9,11-12")] == [1, 3, 5, 9, 11, 12]
    assert in_task_list(4, "1,4") and not in_task_list(2, "1,4")
    assert not in_task_list(1, "") and not in_task_list(1, "undefined")


def test_a_pending_array_is_one_line_whose_task_list_names_each_element() -> None:
    queue = parse_queue(recorded("arrays_qstat_xml_pending.xml"))

    for task in (1, 2, 3, 4):
        status = queue.status(f"{ARRAY}.{task}")
        assert status is not None and (status.job_id, status.state) == (f"{ARRAY}.{task}", JobState.HELD)
    assert queue.status(f"{ARRAY}.5") is None


def test_started_elements_have_their_own_line_and_the_pending_rest_share_one() -> None:
    queue = parse_queue(recorded("arrays_qstat_xml_mixed.xml"))

    seen = {task: queue.status(f"{ARRAY}.{task}") for task in (1, 2, 3, 4, 9)}
    assert {task: status.state if status else None for task, status in seen.items()} == {
        1: JobState.HELD,
        2: JobState.RUNNING,
        3: JobState.RUNNING,
        4: JobState.HELD,
        9: None,
    }
    assert seen[2] is not None and seen[2].nodes == "vm"


def test_an_array_that_cannot_start_holds_each_element_with_its_own_tasks_reason() -> None:
    eqw = JOBS["eqw"]
    framed = {
        "qstat": (0, recorded("arrays_qstat_xml_eqw.xml")),
        "errors": (0, recorded("arrays_qstat_j_eqw.txt")),
    }
    report = sge.SgeDialect(LOG_DIR).read_poll(framed, [f"{eqw}.1", f"{eqw}.3"])

    for task in (1, 3):
        seen = report.observations[f"{eqw}.{task}"]
        assert seen.status is not None and (seen.status.state, seen.final) == (JobState.HELD, False)
        assert "can't chdir to /nonexistent/dir" in (seen.status.reason or "") and "qmod -cj" in (
            seen.status.reason or ""
        )


def test_qacct_keeps_one_record_per_task_and_each_ends_with_its_own_exit_code() -> None:
    records, unknown, notices = parse_qacct(recorded("arrays_qacct.txt"))

    assert sorted(records) == [f"{ARRAY}.2", f"{ARRAY}.3", f"{ARRAY}.4"] and unknown == set() and notices == []
    four = status_from_record(records[f"{ARRAY}.4"])
    assert (four.job_id, four.state, four.exit_code) == (f"{ARRAY}.4", JobState.FAILED, 3)
    assert status_from_record(records[f"{ARRAY}.2"]).state is JobState.COMPLETED


def read(fixture: str, ids: list[str]):  # type: ignore[no-untyped-def]
    framed = remote_shell.parse_framed((FIXTURES / fixture).read_bytes(), POLL_TOKEN)
    return framed, sge.SgeDialect(LOG_DIR).read_poll(framed.sections, ids)


ELEMENTS = [f"{ARRAY}.{task}" for task in (1, 2, 3, 4, 9)]


def test_a_recorded_live_poll_reads_each_element_and_only_its_own_output() -> None:
    framed, report = read("arrays_poll_live.bin", ELEMENTS)

    assert report.failure is None and report.notices == ()
    seen = {job_id: (o.status.state if o.status else None, o.final) for job_id, o in report.observations.items()}
    assert seen == {
        f"{ARRAY}.1": (JobState.HELD, False),
        f"{ARRAY}.2": (JobState.RUNNING, False),
        f"{ARRAY}.3": (JobState.RUNNING, False),
        f"{ARRAY}.4": (JobState.HELD, False),
        f"{ARRAY}.9": (None, False),  # absent: the poller's grace decides, never a success
    }
    assert framed.chunks[f"{ARRAY}.2"].data == f"task 2 of job {ARRAY}\n".encode()


def test_a_recorded_poll_after_the_end_gives_each_element_its_own_outcome() -> None:
    _, report = read("arrays_poll_ended.bin", ELEMENTS)

    assert report.failure is None and report.notices == ()
    seen = {
        job_id: (o.status.state, o.status.exit_code, o.final) if o.status else None
        for job_id, o in report.observations.items()
    }
    assert seen == {
        f"{ARRAY}.1": (JobState.CANCELLED, None, True),  # our qdel while pending: no record at all
        f"{ARRAY}.2": (JobState.COMPLETED, 0, True),
        f"{ARRAY}.3": (JobState.CANCELLED, 137, True),  # our qdel while running
        f"{ARRAY}.4": (JobState.FAILED, 3, True),  # its own exit code, not its array's
        f"{ARRAY}.9": None,
    }


def sorted_by_the_login_node(xml: str, ids: list[str]) -> tuple[set[str], set[str], set[str]]:
    """What the poll script's awk decides on the login node, from a recorded ``qstat -xml``: the ids
    qstat no longer lists, the job numbers in an error state, the job numbers to ask qacct about."""
    program = sge._SORT_AWK
    result = subprocess.run(
        ["awk", "-v", f"ids={','.join(ids)}", program], input=xml, capture_output=True, text=True, check=True
    )
    gone, bad, jobs = result.stdout.split("|")
    return set(gone.split()), set(bad.split(",")) - {""}, set(jobs.split())


def test_the_login_node_tells_listed_elements_from_gone_ones_by_their_own_line_or_their_task_list() -> None:
    mixed = recorded("arrays_qstat_xml_mixed.xml")
    asked = [f"{ARRAY}.{task}" for task in (1, 2, 3, 4, 9)] + ["12345"]

    assert sorted_by_the_login_node(mixed, asked) == ({f"{ARRAY}.9", "12345"}, set(), {ARRAY, "12345"})
    eqw = JOBS["eqw"]
    erring = sorted_by_the_login_node(recorded("arrays_qstat_xml_eqw.xml"), [f"{eqw}.2", f"{eqw}.4"])
    assert erring == ({f"{eqw}.4"}, {eqw}, {eqw})
    assert sorted_by_the_login_node(recorded("qstat_xml_empty.xml"), [f"{ARRAY}.1"]) == ({f"{ARRAY}.1"}, set(), {ARRAY})


def test_the_poll_asks_qacct_once_per_array_whatever_the_number_of_its_ended_elements() -> None:
    script = sge.poll_script("T", [f"{ARRAY}.{task}" for task in range(1, 7)] + ["12"], [], LOG_DIR)
    assert script.count("qstat -xml") == 1 and 'for _j in $_jobs; do qacct -j "$_j"; done' in script
    with pytest.raises(ValueError):
        sge.poll_script("T", ["12.x"], [], LOG_DIR)


def test_cancelling_an_element_deletes_that_task_alone_and_marks_it() -> None:
    script = sge.cancel_script([f"{ARRAY}.3", f"{ARRAY}.1", "77"], LOG_DIR)

    assert f"qdel {ARRAY} -t 3 {ARRAY} -t 1 77 2>&1" in script
    assert recorded("arrays_cancel_output.txt") == f"exit 0\n{ARRAY}.1\n{ARRAY}.3\n"  # both marked, one qdel
    assert "has deleted job-array task" in recorded("arrays_qdel_elements.txt")


def test_the_clusters_cap_is_read_from_its_configuration_and_no_cap_is_the_default() -> None:
    assert sge_array.parse_max_array_size(recorded("arrays_max_array_size.txt")) == 6
    assert sge_array.parse_max_array_size("0\n") == sge_array.DEFAULT_MAX_ARRAY_SIZE
    assert sge_array.parse_max_array_size("") is None
    assert "more than 6 tasks" in recorded("arrays_qsub_cap.txt")  # the cap counts tasks, not the index
    assert "exit 0" in recorded("arrays_qsub_cap.txt").split("more than 6 tasks")[1]


# --- the array's batch script, run by bash -----------------------------------------------------------


def run_task(script: str, task: int, todo: str, tmp_path: Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "array.sh"
    path.write_text(script)
    variables = {"PATH": "/usr/bin:/bin", "SGE_TASK_ID": str(task), "_AHE_TASKS": todo, **(env or {})}
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, env=variables, timeout=30)


def test_each_task_runs_the_element_its_submission_numbered_it_for_and_a_broken_one_fails_alone(
    tmp_path: Path,
) -> None:
    key = JobKey("0123456789abcdef0123", 1)
    elements = [
        ArrayElement(0, key, "echo zero; exit 3", 10),
        ArrayElement(1, key, "echo one; if then fi", 11),  # does not parse
        ArrayElement(2, key, "printf '%s\\n' \"it's \\$(x) \\`y\\`\"\ncat <<'E'\nline two\nE", 12),
    ]
    script = sge_array.array_script("#!/bin/bash\necho shared setup\n", elements)

    # Element 0 was adopted: this submission's tasks 1 and 2 run elements 2 and 1.
    two, one, beyond = (run_task(script, task, "2,1", tmp_path) for task in (1, 2, 3))
    zero = run_task(script, 1, "0", tmp_path)

    assert (two.returncode, two.stdout) == (0, "shared setup\nit's $(x) `y`\nline two\n")
    assert one.returncode != 0 and "zero" not in one.stdout
    assert beyond.returncode == 1 and "no element" in beyond.stderr
    assert (zero.returncode, zero.stdout) == (3, "shared setup\nzero\n")


def test_each_element_gets_its_own_env_values_and_none_of_its_siblings(tmp_path: Path) -> None:
    key = JobKey("0123456789abcdef0123", 1)
    elements = [
        ArrayElement(
            index, key, 'echo "$PART $SITE"; env | grep -c "^_AHE_" || true', index, {"PART": part, "SITE": "x"}
        )
        for index, part in enumerate(["a b", "it's $(c)\nline"])
    ]
    script = sge_array.array_script("#!/bin/bash\n", elements)
    shared, own = split_env(elements)

    assert "a b" not in script and "$(c)" not in script  # values travel in the environment only
    outputs = [run_task(script, task, "0,1", tmp_path, {**shared, **own}).stdout for task in (1, 2)]
    assert outputs == ["a b x\n0\n", "it's $(c)\nline x\n0\n"]


def test_a_whole_script_by_the_user_is_every_elements_script() -> None:
    key = JobKey("0123456789abcdef0123", 1)
    head = "#!/bin/bash\n#$ -l h_vmem=1G\npython run.py\n"
    assert sge_array.array_script(head, [ArrayElement(0, key, "", 0), ArrayElement(1, key, "", 1)]) == head


# --- the submit script, against stand-ins ------------------------------------------------------------


class Login(StandInLogin):
    def record_of(self, key: JobKey) -> Path:
        return self.log_dir / f"{key.task_digest}.jobs"

    def submit(self, elements: list[ArrayElement], *, throttle: int | None = None) -> str:
        script = sge_array.submit_script(
            sge_array.array_script("#!/bin/bash\n", elements),
            elements,
            job_name="mapped",
            log_dir=LOG_DIR,
            env={"TOKEN": "it's a secret"},
            throttle=throttle,
        )
        result = self.run(script)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def submitted_env(self) -> str:
        return (self.record / "env").read_text()


@pytest.fixture
def login(tmp_path: Path) -> Login:
    assert shutil.which("flock"), "the submit script locks with flock (util-linux), as every login node has it"
    stand_in = Login(tmp_path, LOG_DIR)
    stand_in.answer("qsub", "5000.1-3:1\n")
    stand_in.answer("qstat", recorded("qstat_xml_empty.xml"))
    return stand_in


def keys(count: int, try_number: int = 1) -> list[JobKey]:
    return [JobKey.for_task_instance("d", "t", "r", map_index, try_number) for map_index in range(count)]


def test_a_chunk_is_one_qsub_without_secrets_on_its_command_line_each_element_recorded_with_its_try(
    login: Login,
) -> None:
    elements = [
        ArrayElement(index, key, f"echo {index}", 40 + index, {"V": f"v{index}"}) for index, key in enumerate(keys(3))
    ]

    outcomes = sge_array.parse_submit_output(login.submit(elements, throttle=2), [0, 1, 2])

    assert [outcome.job_id for outcome in outcomes.values()] == ["5000.1", "5000.2", "5000.3"]
    (call,) = login.calls("qsub")
    assert "-t 1-3 -tc 2" in call and "secret" not in call and "v1" not in call
    assert "-v TOKEN,_AHE_0_V,_AHE_1_V,_AHE_2_V,_AHE_TASKS " in call
    assert "TOKEN=it's a secret\n" in login.submitted_env() and "_AHE_TASKS=0,1,2\n" in login.submitted_env()
    assert (login.calls("qstat"), login.calls("qacct")) == ([], [])  # nothing recorded: nothing to ask
    for index, key in enumerate(keys(3)):
        assert login.record_of(key).read_text() == f"5000.{index + 1} 1\n"


def listing(job: str, state: str, tasks: str) -> str:
    """A ``qstat -xml`` answer with one line, as Grid Engine writes it."""
    return (
        "<?xml version='1.0'?>\n<job_info>\n  <queue_info>\n  </queue_info>\n  <job_info>\n"
        f'    <job_list state="pending">\n      <JB_job_number>{job}</JB_job_number>\n'
        f"      <JB_name>mapped</JB_name>\n      <state>{state}</state>\n      <tasks>{tasks}</tasks>\n"
        "    </job_list>\n  </job_info>\n</job_info>\n"
    )


def test_an_element_of_this_try_is_adopted_even_once_watched_and_the_rest_renumbered_from_one(login: Login) -> None:
    first, second, third = keys(3)
    login.record_of(second).write_text("4000.2 1\n")
    login.claim(second.task_digest, "4000.2")  # its trigger watched it, then the triggerer restarted
    login.answer("qstat", listing("4000", "r", "2"))
    login.answer("qsub", "5000.1-2:1\n")

    outcomes = sge_array.parse_submit_output(
        login.submit([ArrayElement(index, key, "echo", index) for index, key in enumerate((first, second, third))]),
        [0, 1, 2],
    )

    assert (outcomes[1].job_id, outcomes[1].adopted, outcomes[1].state) == ("4000.2", True, "r")
    assert [(outcomes[i].job_id, outcomes[i].adopted) for i in (0, 2)] == [("5000.1", False), ("5000.2", False)]
    assert login.calls("qsub")[0].endswith("-t 1-2") and "_AHE_TASKS=0,2\n" in login.submitted_env()
    assert login.record_of(third).read_text() == "5000.2 1\n"
    assert len(login.calls("qstat")) == 1  # one listing serves every element of the chunk


def test_an_element_a_trigger_watched_for_an_earlier_try_is_never_adopted_by_a_retry(login: Login) -> None:
    (retry,) = keys(1, try_number=2)
    login.record_of(retry).write_text("4000.1 1\n")
    login.claim(retry.task_digest, "4000.1")
    login.answer("qstat", listing("4000", "r", "1"))
    login.answer("qsub", "5000.1-1:1\n")

    outcomes = sge_array.parse_submit_output(login.submit([ArrayElement(0, retry, "echo again", 0)]), [0])

    assert (outcomes[0].job_id, outcomes[0].adopted) == ("5000.1", False)
    assert login.record_of(retry).read_text() == "4000.1 1\n5000.1 2\n"


def test_a_pending_element_qstat_shows_only_in_its_arrays_task_list_is_adopted(login: Login) -> None:
    (key,) = keys(1)
    login.record_of(key).write_text("4000.3 1\n")
    login.answer("qstat", listing("4000", "qw", "1-5:2"))

    outcomes = sge_array.parse_submit_output(login.submit([ArrayElement(0, key, "echo", 0)]), [0])

    assert (outcomes[0].job_id, outcomes[0].adopted, outcomes[0].state) == ("4000.3", True, "qw")
    assert login.calls("qsub") == []


def test_an_element_that_ended_unwatched_is_adopted_with_its_own_tasks_outcome_from_accounting(login: Login) -> None:
    completed, failed = keys(2)
    login.record_of(completed).write_text(f"{ARRAY}.2 1\n")
    login.record_of(failed).write_text(f"{ARRAY}.4 1\n")
    login.answer("qacct", recorded("arrays_qacct.txt"))

    outcomes = sge_array.parse_submit_output(
        login.submit([ArrayElement(0, completed, "echo", 0), ArrayElement(1, failed, "echo", 1)]), [0, 1]
    )

    assert [(o.job_id, o.state, o.ended) for o in outcomes.values()] == [
        (f"{ARRAY}.2", "COMPLETED", True),
        (f"{ARRAY}.4", "FAILED", True),
    ]
    assert login.calls("qsub") == [] and login.calls("qacct") == [f"-j {ARRAY}"]  # once for the array's elements


def test_an_element_accounting_never_knew_is_submitted_again_and_a_failing_qstat_submits_nothing(
    login: Login,
) -> None:
    (key,) = keys(1)
    login.record_of(key).write_text("4000.1 1\n")  # deleted while pending: no record anywhere
    login.answer("qacct", "error: job id 4000 not found\n", rc=1)
    login.answer("qsub", "5000.1-1:1\n")
    assert sge_array.parse_submit_output(login.submit([ArrayElement(0, key, "echo", 0)]), [0])[0].job_id == "5000.1"

    login.answer("qstat", "error: commlib error: got select error (Connection refused)\n", rc=1)
    element = ArrayElement(0, key, "echo", 0)
    script = sge_array.submit_script("#!/bin/bash\n", [element], job_name="m", log_dir=LOG_DIR, env={})
    result = login.run(script)
    assert result.returncode != 0 and "Connection refused" in result.stderr and len(login.calls("qsub")) == 1


def test_the_recorded_submissions_name_each_element_and_a_lost_record_resubmits_that_element_as_task_one() -> None:
    fresh = sge_array.parse_submit_output(recorded("arrays_submit_fresh.txt"), [0, 1, 2])
    again = sge_array.parse_submit_output(recorded("arrays_submit_adopted.txt"), [0, 1, 2])
    renumbered = sge_array.parse_submit_output(recorded("arrays_submit_renumbered.txt"), [0, 1, 2])

    assert [o.job_id for o in fresh.values()] == [f"{JOBS['submitted']}.{task}" for task in (1, 2, 3)]
    assert all(o.adopted and o.ended for o in again.values())
    assert (renumbered[0].job_id, renumbered[0].adopted) == (f"{JOBS['resubmitted']}.1", False)
    # Each task ran the element it was numbered for, the resubmitted one as task 1 of its new job.
    assert recorded("arrays_submit_logs.txt").splitlines().count("element 0 is task 1: p0") == 2


def test_an_answer_without_every_elements_id_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match=r"index\(es\) \[1\]"):
        sge_array.parse_submit_output("SUBMITTED 0 5000.1\n", [0, 1])
