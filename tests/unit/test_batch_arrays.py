"""AWS Batch arrays of mapped task instances, the pure parts: the one SubmitJob request, the script
every child runs (run here by bash, as the container runs it, with only AWS_BATCH_JOB_ARRAY_INDEX
differing), how elements are cut into arrays that Batch accepts, and reading an array back to adopt.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from typing import Any

import pytest

from airflow_hpc_provider.dialects import batch, batch_array
from airflow_hpc_provider.dialects.batch import ContainerRequest, GitCheckout
from airflow_hpc_provider.dialects.batch_array import ArrayShape
from airflow_hpc_provider.dialects.slurm_array import ArrayElement, carrier
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobKey

TRICKY = 'it\'s "quoted" $(touch /tmp/pwned) `id` \\ and a\nnewline'


def key(n: int, try_number: int = 1) -> JobKey:
    return JobKey.for_task_instance("dag", "task", "run", n, try_number)


def shape(**changes: Any) -> ArrayShape:
    fields: dict[str, Any] = {
        "name": batch_array.array_name("dag-task", "0123456789abcdef0123"),
        "queue": "q",
        "definition_arn": "arn:aws:batch:us-east-1:123456789012:job-definition/d:1",
        "head": batch_array.head_script(),
        "group": "0123456789abcdef0123",
        "resources": ContainerRequest(vcpus=1, memory_mb=512),
    }
    return ArrayShape(**{**fields, **changes})


def elements(count: int, command: str | None = None, env: dict[str, str] | None = None) -> list[ArrayElement]:
    return [
        ArrayElement(
            index,
            key(index),
            command if command is not None else f"echo element {index} says $SAMPLE",
            index,
            {"SAMPLE": f"sample_{index}", **(env or {})},
        )
        for index in range(count)
    ]


def run_child(request: dict[str, Any], index: int | None) -> subprocess.CompletedProcess[str]:
    """What Batch runs for child ``index``: the request's command with its environment (and the index)."""
    overrides = request["containerOverrides"]
    env = {item["name"]: item["value"] for item in overrides.get("environment", [])}
    env["PATH"] = "/usr/bin:/bin"
    if index is not None:
        env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
    return subprocess.run(overrides["command"], env=env, capture_output=True, text=True, timeout=30)


# --- the script every child runs -------------------------------------------------------------------


def test_each_child_runs_its_own_command_with_its_own_env_values_and_sees_no_other_childs() -> None:
    items = elements(4)
    items[2] = ArrayElement(2, key(2), 'printf "%s|" "$SAMPLE"; env | grep -c _AHE_ || true', 2, {"SAMPLE": TRICKY})
    request = batch_array.array_request(shape(), items)

    assert run_child(request, 0).stdout == "element 0 says sample_0\n"
    assert run_child(request, 3).stdout == "element 3 says sample_3\n"
    tricky = run_child(request, 2)
    assert tricky.stdout == f"{TRICKY}|0\n", tricky.stderr  # verbatim, and no carrier left in its env


def test_a_command_that_does_not_parse_fails_its_own_child_only() -> None:
    items = elements(3)
    items[1] = ArrayElement(1, key(1), "echo 'unterminated", 1, {"SAMPLE": "x"})
    request = batch_array.array_request(shape(), items)

    assert run_child(request, 1).returncode != 0
    assert run_child(request, 0).returncode == 0 and run_child(request, 2).returncode == 0


def test_a_childs_exit_code_is_its_commands() -> None:
    items = elements(3)
    items[1] = ArrayElement(1, key(1), "echo failing; exit 3", 1, {"SAMPLE": "x"})
    request = batch_array.array_request(shape(), items)

    assert run_child(request, 1).returncode == 3
    assert run_child(request, 2).returncode == 0


def test_elements_sharing_one_command_carry_it_once_and_each_child_its_own_values() -> None:
    items = elements(5, command='echo "$SAMPLE and $MODE"', env={"MODE": "fast"})
    request = batch_array.array_request(shape(), items)
    script = request["containerOverrides"]["command"][2]

    assert script.count('echo "$SAMPLE and $MODE"') == 1 and "case" not in script
    assert run_child(request, 4).stdout == "sample_4 and fast\n"
    environment = {item["name"]: item["value"] for item in request["containerOverrides"]["environment"]}
    assert environment["MODE"] == "fast"  # a value every element has alike goes once, under its name
    assert environment[carrier(4, "SAMPLE")] == "sample_4"  # each element's own, under its carrier


def test_an_element_without_a_value_others_have_leaves_it_unset() -> None:
    items = [
        ArrayElement(0, key(0), 'echo "${ONLY_ZERO-unset}"', 0, {"ONLY_ZERO": "zero"}),
        ArrayElement(1, key(1), 'echo "${ONLY_ZERO-unset}"', 1, {}),
    ]
    request = batch_array.array_request(shape(), items)

    assert run_child(request, 0).stdout == "zero\n"
    assert run_child(request, 1).stdout == "unset\n"


def test_env_rule_lines_run_after_the_child_has_its_own_values_and_before_its_command() -> None:
    items = [
        ArrayElement(n, key(n), 'echo "$DATA"', n, {"AIRFLOW_HPC_ENV_SET_DATA": f"/scratch/{n}"}) for n in range(2)
    ]
    prelude = ('export DATA="$AIRFLOW_HPC_ENV_SET_DATA"; unset AIRFLOW_HPC_ENV_SET_DATA',)
    request = batch_array.array_request(shape(prelude=prelude), items)

    assert run_child(request, 1).stdout == "/scratch/1\n"


def test_a_lone_element_is_a_job_of_its_own_whose_script_reads_no_index_as_zero() -> None:
    request = batch_array.array_request(shape(), elements(1))

    assert "arrayProperties" not in request  # Batch's arrays have 2 children at least
    assert run_child(request, None).stdout == "element 0 says sample_0\n"


def test_the_git_checkout_runs_before_every_childs_command() -> None:
    head = batch_array.head_script(GitCheckout(repo="https://example.invalid/r.git", sha="a" * 40))
    request = batch_array.array_request(shape(head=head), elements(2))
    script = request["containerOverrides"]["command"][2]

    assert script.index("git clone") < script.index("_ahe_name") < script.index("echo element")


# --- the request ----------------------------------------------------------------------------------


def test_the_request_is_one_array_whose_command_names_variables_and_never_holds_a_value() -> None:
    secret = "s3cr3t-token-value"
    items = elements(3, env={"TOKEN": secret})
    items[1] = ArrayElement(1, key(1, try_number=2), items[1].command, 1, {"SAMPLE": "x", "TOKEN": "other-secret"})
    request = batch_array.array_request(shape(tags=(("project", "p1"),), timeout_s=600, retry_attempts=2), items)

    assert request["arrayProperties"] == {"size": 3}
    assert request["jobName"] == "dag-task-array-0123456789abcdef"
    assert request["tags"] == {"project": "p1", batch_array.ARRAY_TAG: "0123456789abcdef0123"}
    assert request["timeout"] == {"attemptDurationSeconds": 600} and request["retryStrategy"] == {"attempts": 2}
    command = json.dumps(request["containerOverrides"]["command"])
    assert secret not in command and "other-secret" not in command and "sample_" not in command
    assert "TOKEN" in command  # named, so a reader of the script knows where it comes from
    recorded = request["parameters"][batch_array.ELEMENTS_PARAMETER].split()
    assert recorded == [f"{key(0).task_digest}:1", f"{key(1).task_digest}:2", f"{key(2).task_digest}:1"]
    assert secret not in json.dumps(request["parameters"]) + json.dumps(request["tags"])


def test_elements_must_be_indexed_from_zero_in_order() -> None:
    items = elements(3)
    with pytest.raises(ValueError, match="indexed"):
        batch_array.array_request(shape(), [items[1], items[2]])


# --- cutting elements into arrays Batch accepts -----------------------------------------------------


def test_twenty_elements_with_a_cap_of_six_are_four_arrays_each_numbered_from_zero() -> None:
    arrays = batch_array.pack(shape(), elements(20), max_size=6)

    assert [len(array) for array in arrays] == [6, 6, 6, 2]
    assert all([element.index for element in array] == list(range(len(array))) for array in arrays)
    assert [element.map_index for array in arrays for element in array] == list(range(20))


def test_arrays_are_cut_where_their_container_overrides_would_pass_what_ecs_accepts() -> None:
    big = "v" * 700  # ten of these are more than 8,192 characters of overrides
    items = [ArrayElement(n, key(n), 'echo "$BIG"', n, {"BIG": f"{n}{big}"}) for n in range(25)]

    arrays = batch_array.pack(shape(), items, max_size=batch_array.MAX_ARRAY_SIZE)

    assert len(arrays) > 2
    for array in arrays:
        request = batch_array.array_request(shape(), array)
        assert batch_array.overrides_size(request) <= batch.OVERRIDES_BUDGET < batch.OVERRIDES_LIMIT
    for array, following in itertools.pairwise(arrays):  # each as long as fits: no array wasted
        longer = [*array, ArrayElement(len(array), following[0].key, following[0].command, 0, following[0].env)]
        assert not batch_array.fits(batch_array.array_request(shape(), longer))
    assert [element.map_index for array in arrays for element in array] == list(range(25))


def test_the_record_of_which_child_is_which_bounds_an_array_by_the_request_size_too() -> None:
    items = [ArrayElement(n, key(n), 'echo "$N"', n, {}) for n in range(2000)]

    arrays = batch_array.pack(shape(), items, max_size=batch_array.MAX_ARRAY_SIZE)

    assert len(arrays) >= 2
    sizes = [batch_array.request_size(batch_array.array_request(shape(), array)) for array in arrays]
    assert max(sizes) <= batch_array.REQUEST_BUDGET


def test_an_element_too_large_for_any_request_is_said_so_and_fits_nowhere() -> None:
    huge = ArrayElement(0, key(0), "echo", 7, {"BIG": "x" * 9000})

    assert not batch_array.fits_alone(shape(), huge)
    with pytest.raises(ValueError, match="map_index 7 does not fit"):
        batch_array.pack(shape(), [huge], max_size=6)


# --- reading arrays back (adoption after a restart) -----------------------------------------------


def described(request: dict[str, Any], job_id: str, created_at: int = 1) -> dict[str, Any]:
    """A DescribeJobs entry of a job submitted with ``request``: the fields Batch returns that we read."""
    entry: dict[str, Any] = {
        "jobId": job_id,
        "jobName": request["jobName"],
        "status": "PENDING",
        "createdAt": created_at,
        "parameters": request["parameters"],
        "tags": request["tags"],
    }
    if "arrayProperties" in request:
        entry["arrayProperties"] = {"size": request["arrayProperties"]["size"], "statusSummary": {}}
    return entry


def test_a_restarted_trigger_finds_its_own_child_by_its_key_and_try() -> None:
    request = batch_array.array_request(shape(), elements(4))
    found = batch_array.find_recorded([described(request, "arr-1")], "0123456789abcdef0123", key(2))

    assert found is not None and found.job_id == "arr-1:2" and found.index == 2 and found.size == 4


def test_a_later_try_never_adopts_an_earlier_tries_child() -> None:
    request = batch_array.array_request(shape(), elements(4))

    assert batch_array.find_recorded([described(request, "arr-1")], "0123456789abcdef0123", key(2, 2)) is None


def test_a_lone_elements_job_is_adopted_under_its_own_id() -> None:
    request = batch_array.array_request(shape(), elements(1))
    found = batch_array.find_recorded([described(request, "solo")], "0123456789abcdef0123", key(0))

    assert found is not None and found.job_id == "solo"


def test_children_other_groups_and_jobs_of_others_are_never_read_as_records() -> None:
    request = batch_array.array_request(shape(), elements(2))
    child = {**described(request, "arr-1:0")}
    other_group = {**described(request, "arr-2"), "tags": {batch_array.ARRAY_TAG: "another"}}
    unreadable = {**described(request, "arr-3"), "parameters": {batch_array.ELEMENTS_PARAMETER: "garbage"}}

    assert batch_array.find_recorded([child, other_group, unreadable], "0123456789abcdef0123", key(0)) is None


def test_of_two_arrays_recording_the_same_try_the_newest_is_adopted() -> None:
    request = batch_array.array_request(shape(), elements(2))
    arrays = [described(request, "older", created_at=1), described(request, "newer", created_at=2)]

    found = batch_array.find_recorded(arrays, "0123456789abcdef0123", key(1))
    assert found is not None and found.job_id == "newer:1"


# --- the operator's arguments, checked when the DAG is parsed ---------------------------------------


def test_batch_refuses_an_array_throttle_at_parse_time_with_what_to_use_instead() -> None:
    from airflow_hpc_provider.operators.batch import BatchRevisionOperator

    with pytest.raises(JobSpecError, match=r"array_throttle=2: AWS Batch has no per-array limit.*maxvCpus"):
        BatchRevisionOperator(task_id="t", command="true", image="x:1", array_throttle=2)
    with pytest.raises(JobSpecError, match="array_throttle=2: AWS Batch has no per-array limit"):
        BatchRevisionOperator.partial(task_id="t", command="true", image="x:1", array_throttle=2)


def test_bad_array_arguments_fail_a_mapped_batch_task_when_the_dag_is_parsed() -> None:
    from airflow_hpc_provider.operators.batch import BatchRevisionOperator

    with pytest.raises(JobSpecError, match="array='yes' must be True, False or None"):
        BatchRevisionOperator.partial(task_id="t", command="true", image="x:1", array="yes")
    with pytest.raises(JobSpecError, match="array_window=0 must be seconds"):
        BatchRevisionOperator(task_id="t", command="true", image="x:1", array_window=0)
    op = BatchRevisionOperator(task_id="t", command="true", image="x:1", array=False, array_window=4)
    assert (op.array, op.array_throttle, op.array_window) == (False, None, 4)


def test_what_keeps_a_batch_task_from_being_an_array_child_is_named() -> None:
    from airflow_hpc_provider.operators.batch import BatchRevisionOperator

    watching = BatchRevisionOperator(task_id="t", job_id="abc")
    own_array = BatchRevisionOperator(task_id="t", command="true", image="x:1", array_size=3)
    fire_and_forget = BatchRevisionOperator(task_id="t", command="true", image="x:1", wait_for_completion=False)

    assert watching.why_no_array_element() == "the task watches an existing job (job_id=)"
    assert own_array.why_no_array_element() == "the task is an array job of its own (array_size=3)"
    assert "wait_for_completion=False" in str(fire_and_forget.why_no_array_element())


@pytest.mark.parametrize(
    ("extra", "expected"), [({}, 10_000), ({"max_array_size": 6}, 6), ({"max_array_size": "50"}, 50)]
)
def test_an_aws_connection_may_cap_the_children_of_an_array(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], expected: int
) -> None:
    from airflow_hpc_provider.hooks.batch import BatchHook

    connection = {"conn_type": "aws", "extra": {"region_name": "us-east-1", **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_ARRAYS", json.dumps(connection))
    assert BatchHook("aws_arrays").max_array_size() == expected


@pytest.mark.parametrize("bad", [1, 10_001, "many", -3])
def test_a_cap_batch_cannot_take_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, bad: Any) -> None:
    from airflow_hpc_provider.errors import ConnectionConfigError
    from airflow_hpc_provider.hooks.batch import BatchHook

    connection = {"conn_type": "aws", "extra": {"region_name": "us-east-1", "max_array_size": bad}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_ARRAYS", json.dumps(connection))
    with pytest.raises(ConnectionConfigError, match=r"max_array_size=.* must be a whole number from 2 to 10000"):
        BatchHook("aws_arrays").max_array_size()


def test_the_batch_arrays_example_maps_one_task_over_fifty_inputs_that_fit_one_array() -> None:
    import runpy
    from pathlib import Path

    example = Path(__file__).parents[2] / "example_dags" / "batch_array_map.py"
    namespace = runpy.run_path(str(example))
    (task,) = namespace["dag"].tasks
    assert task.operator_class.__name__ == "BatchRevisionOperator"
    assert task.partial_kwargs.get("array") is None  # arrays where possible: the default
    command = task.partial_kwargs["command"]
    items = [ArrayElement(n, key(n), command, n, {"SAMPLE": sample}) for n, sample in enumerate(namespace["SAMPLES"])]
    assert len(items) == 50
    assert [len(array) for array in batch_array.pack(shape(), items, batch_array.MAX_ARRAY_SIZE)] == [50]
