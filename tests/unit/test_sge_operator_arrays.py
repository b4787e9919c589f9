"""A mapped SgeOperator task instance defers, touching no cluster, to the trigger that submits it with
its siblings as one Grid Engine array; its array arguments fail the DAG at parse time."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from airflow.exceptions import TaskDeferred

from airflow_hpc_provider.errors import ClusterUnreachableError, JobSpecError
from airflow_hpc_provider.operators.sge import SgeOperator
from airflow_hpc_provider.triggers.sge_array import SgeArrayElementTrigger
from airflow_hpc_provider.watching.cluster_arrays import request_from_dict

CONNECTION = {
    "conn_type": "sge",
    "host": "127.0.0.1",
    "port": 9,  # nothing listens: the worker must not connect
    "login": "someone",
    "extra": {"queue": "all.q", "log_dir": "airflow-logs"},
}


class MappedInstance:
    def __init__(self, map_index: int) -> None:
        self.dag_id, self.task_id, self.run_id = "d", "mapped", "r"
        self.map_index, self.try_number = map_index, 1
        self.task = type("Task", (), {})()

    def get_ti_count(self, **_: object) -> int:
        return 20


@pytest.fixture(autouse=True)
def sge_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SGE_DEFAULT", json.dumps(CONNECTION))


def deferred(operator: SgeOperator, map_index: int) -> Any:
    with pytest.raises(TaskDeferred) as deferral:
        operator.execute({"ti": MappedInstance(map_index)})  # type: ignore[arg-type]
    return deferral.value.trigger


def test_a_mapped_instance_defers_to_a_grid_engine_element_trigger_that_holds_its_own_command_and_env() -> None:
    operator = SgeOperator(
        task_id="mapped",
        command="python run.py --sample 7",
        env={"SAMPLE": "it's $(seven)"},
        memory="1G",
        time_limit="00:10:00",
        array_throttle=3,
    )

    trigger = deferred(operator, 7)

    assert isinstance(trigger, SgeArrayElementTrigger) and trigger.job_id == ""
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_hpc_provider.triggers.sge_array.SgeArrayElementTrigger"
    assert kwargs["log_dir"] == "airflow-logs"  # where its cancel marks what it deleted
    request = request_from_dict(kwargs["conn_id"], kwargs["element"])
    assert (request.command, request.map_index, request.expected) == ("python run.py --sample 7", 7, 20)
    assert dict(request.env) == {"SAMPLE": "it's $(seven)"}
    assert "#$ -l h_vmem=1024M" in request.group.head and "#$ -l h_rt=0:10:00" in request.group.head
    assert "-q all.q" in request.group.head and "python run.py" not in request.group.head
    assert "it's $(seven)" not in request.group.head  # values travel in the environment only
    assert request.group.throttle == 3
    # Rebuilt from what the database stores, it is the same trigger (a restarted triggerer).
    assert SgeArrayElementTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_array_false_submits_a_job_of_its_own_and_array_true_fails_where_no_element_can_be() -> None:
    # A job of its own is submitted from the worker: it connects, and nothing listens there.
    with pytest.raises(ClusterUnreachableError, match=re.escape("127.0.0.1:9")):
        SgeOperator(task_id="mapped", command="true", array=False).execute({"ti": MappedInstance(1)})  # type: ignore[arg-type]
    with pytest.raises(JobSpecError, match="array=True, but the task does not defer"):
        SgeOperator(task_id="mapped", command="true", array=True, deferrable=False).execute(
            {"ti": MappedInstance(1)}  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"array_throttle": 0}, "array_throttle=0 must be a whole number of at least 1"),
        ({"array_window": -1}, "array_window=-1 must be seconds, more than zero"),
        ({"array": "yes"}, "array='yes' must be True, False or None"),
    ],
)
def test_bad_array_arguments_fail_the_dag_at_parse_time_mapped_or_not(
    arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(JobSpecError, match=re.escape(message)):
        SgeOperator(task_id="t", command="true", **arguments)  # type: ignore[arg-type]
    with pytest.raises(JobSpecError, match=re.escape(message)):
        SgeOperator.partial(task_id="t", **arguments).expand(command=["true", "false"])


def test_python_functions_on_grid_engine_stay_one_job_each() -> None:
    from airflow_hpc_provider.decorators.sge import SgePythonOperator

    assert SgeOperator.supports_arrays and not SgePythonOperator.supports_arrays
