"""Bad input to PbsOperator fails when the DAG is parsed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.operators.pbs import PbsOperator


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"walltime": "2 hours"}, "time_limit='2 hours' is not a time limit"),
        ({"walltime": timedelta(seconds=-1)}, "must be a positive duration"),
        ({"pbs_queue": "work queue"}, "pbs_queue='work queue'"),
        ({"partition": "a,b"}, "PBS takes one queue"),
        ({"extra_directives": ["-N other"]}, "-N is set by the operator"),
        ({"extra_directives": ["-V"]}, "-V is set by the operator"),
        ({"memory": "lots"}, "memory='lots'"),
    ],
)
def test_invalid_pbs_arguments_are_refused_at_parse_time(kwargs: dict, words: str) -> None:
    with pytest.raises(JobSpecError) as error:
        PbsOperator(task_id="t", command="true", **kwargs)
    assert words in str(error.value)


def test_the_airflow_executor_queue_keeps_its_meaning() -> None:
    op = PbsOperator(task_id="t", command="true", queue="celery_gpu", pbs_queue="workq")
    assert op.queue == "celery_gpu" and op.pbs_queue == "workq"
