"""Slurm arrays of mapped task instances, the pure parts: reading squeue and sacct about elements
(recorded real output), the array's batch script run by bash, and the submit script run by /bin/sh
against stand-in squeue/sacct/sbatch that record their calls.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from airflow_hpc_provider.dialects import slurm_array, slurm_status
from airflow_hpc_provider.dialects.slurm_array import ArrayElement
from airflow_hpc_provider.errors import ClusterUnreachableError
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.jobs import JobKey, JobState
from airflow_hpc_provider.watching.arrays import (
    FORGET_AFTER_S,
    QUIET_S,
    ElementRequest,
    Waiting,
    collector_for,
    due,
)
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup
from airflow_hpc_provider.watching.slurm_arrays import SlurmArraySubmitter
from tests.unit.stand_in_login import StandInLogin

FIXTURES = Path(__file__).parents[1] / "fixtures" / "slurm"
LOG_DIR = "logs"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- reading the scheduler's answers about elements ------------------------------------------------


def test_squeue_names_pending_elements_by_their_range_and_started_ones_by_their_own_name() -> None:
    assert slurm_status.element_names("9331_[2-4,7%2]") == ["9331_2", "9331_3", "9331_4", "9331_7"]
    assert slurm_status.element_names("9331_5") == ["9331_5"]
    assert slurm_status.element_names("9331") == []
    assert slurm_status.element_names("9331+0") == []


def test_a_poll_reads_each_watched_element_under_its_own_name_pending_or_running() -> None:
    watched = ["9331_0", "9331_1", "9331_2", "9331_3", "9331_4"]
    poll = slurm_status.parse_poll({"squeue": (0, fixture("squeue_elements_pending.txt"))}, watched)

    states = {job_id: seen.queue.state if seen.queue else None for job_id, seen in poll.observations.items()}
    assert states == {
        "9331_0": JobState.RUNNING,
        "9331_1": JobState.RUNNING,
        "9331_2": JobState.PENDING,
        "9331_3": JobState.PENDING,
        "9331_4": JobState.PENDING,
    }
    assert all(seen.queue is not None and seen.queue.job_id == job_id for job_id, seen in poll.observations.items())


def test_an_element_that_failed_is_failed_with_its_own_exit_code_never_its_arrays_success() -> None:
    watched = ["9331_0", "9331_3", "9331_4"]
    poll = slurm_status.parse_poll(
        {
            "squeue": (0, fixture("squeue_elements_ended.txt")),
            "sacct": (0, fixture("sacct_elements_ended.txt")),
        },
        watched,
    )
    ended = {
        job_id: slurm_status.observe(seen, poll.accounting_available) for job_id, seen in poll.observations.items()
    }

    assert (ended["9331_0"].status.state, ended["9331_0"].final) == (JobState.COMPLETED, True)
    assert (ended["9331_3"].status.state, ended["9331_3"].status.exit_code, ended["9331_3"].final) == (
        JobState.FAILED,
        3,
        True,
    )
    # 9331_4 is in squeue only (sacct was not asked about it): failed, exit 4, not yet final.
    assert (ended["9331_4"].status.state, ended["9331_4"].status.exit_code) == (JobState.FAILED, 4)


def test_sacct_rows_of_elements_are_keyed_by_element_name_with_their_peak_memory() -> None:
    rows = slurm_status.parse_sacct(fixture("sacct_elements_ended.txt"))

    assert set(rows) == {"9331_0", "9331_3"}
    assert rows["9331_3"].exit_code == 3 and rows["9331_3"].job_id == "9331_3"


# --- the array's batch script ---------------------------------------------------------------------


def run_element(script: str, index: int, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "array.sh"
    path.write_text(script)
    return subprocess.run(
        ["bash", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": str(index)},
        timeout=30,
    )


def test_each_element_runs_only_its_own_command_and_a_broken_one_fails_alone(tmp_path: Path) -> None:
    key = JobKey("0123456789abcdef0123", 1)
    elements = [
        ArrayElement(0, key, "echo zero; exit 3", 10),
        ArrayElement(1, key, "echo one; if then fi", 11),  # does not parse
        ArrayElement(2, key, "printf '%s\\n' \"it's \\$(x) \\`y\\`\"\ncat <<'E'\nline two\nE", 12),
    ]
    script = slurm_array.array_script("#!/bin/bash\necho shared setup\n", elements)

    zero, one, two, other = (run_element(script, index, tmp_path) for index in (0, 1, 2, 9))

    assert (zero.returncode, zero.stdout) == (3, "shared setup\nzero\n")
    assert one.returncode != 0 and "zero" not in one.stdout
    assert (two.returncode, two.stdout) == (0, "shared setup\nit's $(x) `y`\nline two\n")
    assert other.returncode == 1 and "no element 9" in other.stderr


def test_each_element_gets_its_own_env_values_and_none_of_its_siblings(tmp_path: Path) -> None:
    key = JobKey("0123456789abcdef0123", 1)
    elements = [
        ArrayElement(
            index, key, 'echo "$PART $SITE"; env | grep -c "^_AHE_" || true', index, {"PART": part, "SITE": "x"}
        )
        for index, part in enumerate(["a b", "it's $(c)"])
    ]
    script = slurm_array.array_script("#!/bin/bash\n", elements)
    shared, own = slurm_array.split_env(elements)

    assert (shared, own) == ({"SITE": "x"}, {"_AHE_0_PART": "a b", "_AHE_1_PART": "it's $(c)"})
    assert "a b" not in script and "$(c)" not in script  # values travel in the environment only
    outputs = []
    for index in (0, 1):
        path = tmp_path / "array.sh"
        path.write_text(script)
        env = {"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": str(index), **shared, **own}
        outputs.append(subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env).stdout)
    assert outputs == ["a b x\n0\n", "it's $(c) x\n0\n"]


def test_a_whole_script_by_the_user_is_every_elements_script() -> None:
    key = JobKey("0123456789abcdef0123", 1)
    head = "#!/bin/bash\n#SBATCH --mem=1G\npython run.py\n"
    assert slurm_array.array_script(head, [ArrayElement(0, key, "", 0), ArrayElement(1, key, "", 1)]) == head


# --- the submit script, against stand-ins -----------------------------------------------------------


class Login(StandInLogin):
    def record_of(self, key: JobKey) -> Path:
        return self.log_dir / f"{key.task_digest}.jobs"

    def submit(self, elements: list[ArrayElement], *, throttle: int | None = None) -> str:
        script = slurm_array.submit_script(
            slurm_array.array_script("#!/bin/bash\n", elements),
            elements,
            job_name="mapped",
            group="g" * 20,
            log_dir=LOG_DIR,
            env={"TOKEN": "it's a secret"},
            throttle=throttle,
        )
        result = self.run(script)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def login(tmp_path: Path) -> Login:
    assert shutil.which("flock"), "the submit script locks with flock (util-linux), as every login node has it"
    return Login(tmp_path, LOG_DIR)


def keys(count: int, try_number: int = 1) -> list[JobKey]:
    return [JobKey.for_task_instance("d", "t", "r", map_index, try_number) for map_index in range(count)]


def test_a_chunk_is_one_sbatch_without_secrets_on_its_command_line_each_element_recorded_with_its_try(
    login: Login,
) -> None:
    elements = [ArrayElement(index, key, f"echo {index}", 40 + index) for index, key in enumerate(keys(3))]

    outcomes = slurm_array.parse_submit_output(login.submit(elements, throttle=2), [0, 1, 2])

    assert [outcome.job_id for outcome in outcomes.values()] == ["5000_0", "5000_1", "5000_2"]
    (call,) = login.calls("sbatch")
    assert "--array=0,1,2%2" in call and "secret" not in call
    assert (login.calls("squeue"), login.calls("sacct")) == ([], [])  # nothing recorded: nothing to ask
    for index, key in enumerate(keys(3)):
        assert login.record_of(key).read_text() == f"5000_{index} 1\n"


def test_an_element_of_this_try_is_adopted_even_once_watched_and_only_the_rest_is_submitted(login: Login) -> None:
    first, second = keys(2)
    login.record_of(first).write_text("4000_0 1\n")
    login.claim(first.task_digest, "4000_0")  # its trigger watched it, then the triggerer restarted
    login.answer("squeue", "4001|RUNNING|4000_0|\n")

    outcomes = slurm_array.parse_submit_output(
        login.submit([ArrayElement(0, first, "echo a", 0), ArrayElement(1, second, "echo b", 1)]), [0, 1]
    )

    assert (outcomes[0].job_id, outcomes[0].adopted, outcomes[0].state) == ("4000_0", True, "RUNNING")
    assert (outcomes[1].job_id, outcomes[1].adopted) == ("5000_1", False)
    assert "--array=1" in login.calls("sbatch")[0]


def test_an_element_a_trigger_watched_for_an_earlier_try_is_never_adopted_by_a_retry(login: Login) -> None:
    (retry,) = keys(1, try_number=2)
    login.record_of(retry).write_text("4000_0 1\n")
    login.claim(retry.task_digest, "4000_0")
    login.answer("squeue", "4001|FAILED|4000_0|\n")

    outcomes = slurm_array.parse_submit_output(login.submit([ArrayElement(0, retry, "echo again", 0)]), [0])

    assert (outcomes[0].job_id, outcomes[0].adopted) == ("5000_0", False)
    assert login.record_of(retry).read_text() == "4000_0 1\n5000_0 2\n"


def test_a_pending_element_squeue_shows_only_in_its_arrays_range_is_adopted(login: Login) -> None:
    (key,) = keys(1)
    login.record_of(key).write_text("4000_3 1\n")
    login.answer("squeue", "4000|PENDING|4000_[2-5%2]|\n")

    outcomes = slurm_array.parse_submit_output(login.submit([ArrayElement(0, key, "echo", 0)]), [0])

    assert (outcomes[0].job_id, outcomes[0].adopted, outcomes[0].state) == ("4000_3", True, "PENDING")
    assert login.calls("sbatch") == []


def test_an_answer_without_every_elements_id_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match=r"index\(es\) \[1\]"):
        slurm_array.parse_submit_output("SUBMITTED 0 5000_0\n", [0, 1])


# --- the collection window (a fake clock: ``now`` is given) ------------------------------------------

GROUP = ClusterArrayGroup(conn_id="c", head="#!/bin/bash\n", job_name="j", log_dir=LOG_DIR, window_s=10.0)
LOOP = asyncio.new_event_loop()


def waiting(map_index: int, since: float, *, expected: int = 20, siblings: str = "d/r/t") -> Waiting:
    request = ElementRequest(
        group=GROUP,
        key=JobKey.for_task_instance("d", "t", "r", map_index, 1),
        command="true",
        map_index=map_index,
        env=(),
        siblings=siblings,
        expected=expected,
    )
    return Waiting(request, LOOP.create_future(), since=since)


def test_the_window_closes_at_once_when_every_sibling_is_here() -> None:
    gathered = [waiting(index, since=100.0, expected=3) for index in range(3)]
    assert due(gathered, {}, last_arrival=100.0, size=6, window_s=10.0, now=100.1) == (3, 0.0)


def test_full_chunks_go_as_they_fill_and_the_rest_waits_for_its_siblings() -> None:
    gathered = [waiting(index, since=100.0 + index) for index in range(8)]
    assert due(gathered, {}, last_arrival=107.0, size=6, window_s=10.0, now=107.0) == (6, 0.0)


def test_siblings_seconds_apart_are_waited_for_up_to_the_window_not_split_by_a_quiet_gap() -> None:
    gathered = [waiting(0, since=100.0), waiting(1, since=101.0)]
    assert due(gathered, {}, last_arrival=101.0, size=6, window_s=10.0, now=105.0) == (0, 5.0)
    assert due(gathered, {}, last_arrival=101.0, size=6, window_s=10.0, now=110.0) == (2, 0.0)


def test_without_a_sibling_count_a_quiet_gap_closes_the_window() -> None:
    gathered = [waiting(0, since=100.0, expected=-1), waiting(1, since=100.5, expected=-1)]
    assert due(gathered, {}, last_arrival=100.5, size=6, window_s=10.0, now=101.0) == (0, QUIET_S - 0.5)
    assert due(gathered, {}, last_arrival=100.5, size=6, window_s=10.0, now=100.5 + QUIET_S) == (2, 0.0)


def test_a_retry_alone_goes_at_once_when_its_siblings_were_submitted_before() -> None:
    gathered = [waiting(7, since=100.0)]
    assert due(gathered, {"d/r/t": set(range(20))}, last_arrival=100.0, size=6, window_s=10.0, now=100.0) == (1, 0.0)


# --- the operator's array arguments, checked when the DAG is parsed ----------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"array_throttle": 0}, "array_throttle=0 must be a whole number of at least 1"),
        ({"array_throttle": "4"}, "array_throttle='4' must be a whole number"),
        ({"array_window": -1}, "array_window=-1 must be seconds, more than zero"),
        ({"array": "yes"}, "array='yes' must be True, False or None"),
    ],
)
def test_bad_array_arguments_fail_the_dag_at_parse_time_mapped_or_not(
    arguments: dict[str, object], message: str
) -> None:
    from airflow_hpc_provider.errors import JobSpecError
    from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

    with pytest.raises(JobSpecError, match=re.escape(message)):
        SlurmSubmitOperator(task_id="t", slurm_conn_id="c", command="true", **arguments)  # type: ignore[arg-type]
    with pytest.raises(JobSpecError, match=re.escape(message)):
        SlurmSubmitOperator.partial(task_id="t", slurm_conn_id="c", **arguments).expand(command=["true", "false"])


class MappedInstance:
    """What mapped_count reads of a task instance: Airflow's count of the task's instances, the task."""

    def __init__(self, count: int, **limits: int | None) -> None:
        self.dag_id, self.task_id, self.run_id = "d", "t", "r"
        self.count = count
        self.task = type("Task", (), limits)()

    def get_ti_count(self, **_: object) -> int:
        return self.count


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({}, 20),
        ({"max_active_tis_per_dag": 4}, 4),
        ({"max_active_tis_per_dagrun": 6, "max_active_tis_per_dag": None}, 6),
        ({"max_active_tis_per_dag": 50}, 20),
    ],
)
def test_the_window_waits_only_for_as_many_siblings_as_the_task_limits_let_start(
    limits: dict[str, int | None], expected: int
) -> None:
    from airflow_hpc_provider.operators.arrays import mapped_count

    assert mapped_count({"ti": MappedInstance(20, **limits)}) == expected  # type: ignore[typeddict-item]


# --- the collector's own life: an unreachable cluster, forgetting ------------------------------------


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_element_whose_cluster_cannot_be_reached_fails_its_trigger_with_why_never_waits_forever() -> None:
    """Before: the collector asked the cluster for its MaxArraySize outside any error handling, so
    a refused connection ended the collector's task and every waiting trigger waited forever."""
    target = SshTarget(conn_id=f"closed-{uuid.uuid4().hex}", host="127.0.0.1", port=closed_port(), connect_timeout_s=5)
    collector = collector_for(SlurmArraySubmitter(target), GROUP)
    with pytest.raises(ClusterUnreachableError):
        await asyncio.wait_for(collector.submit(waiting(3, since=0.0, expected=1).request), timeout=60)


async def test_a_collector_idle_for_an_hour_is_forgotten() -> None:
    target = SshTarget(conn_id=f"forget-{uuid.uuid4().hex}", host="login.invalid")
    idle = collector_for(SlurmArraySubmitter(target), GROUP)
    assert collector_for(SlurmArraySubmitter(target), GROUP) is idle  # one per group on this event loop
    later = time.monotonic() + FORGET_AFTER_S + 1
    assert collector_for(SlurmArraySubmitter(target), GROUP, now=later) is not idle
