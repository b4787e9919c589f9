"""Bad input to SlurmSubmitOperator fails when the DAG is parsed, naming the argument and the value."""

from __future__ import annotations

from datetime import timedelta

import pytest

from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator


def operator(**kwargs) -> SlurmSubmitOperator:
    return SlurmSubmitOperator(task_id="t", **{"command": "true", **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"cpus": -1}, "cpus=-1"),
        ({"cpus": 0}, "cpus=0"),
        ({"memory": "12XB"}, "memory='12XB'"),
        ({"memory": -5}, "memory=-5"),
        ({"time_limit": timedelta(minutes=-5)}, "must be a positive duration"),
        ({"time_limit": "tomorrow"}, "time_limit='tomorrow'"),
        ({"partition": "gpu queue"}, "partition='gpu queue'"),
        ({"partition": "debug\n#SBATCH --x"}, "partition="),
        ({"account": "a;b"}, "account='a;b'"),
        ({"gres": "gpu:2 --x"}, "gres="),
        ({"nodes": 1.5}, "nodes=1.5"),
        ({"env": {"NOT-A-NAME": "x"}}, "NOT-A-NAME"),
        ({"extra_options": ["--output=/tmp/x"]}, "--output is set by the operator"),
        ({"extra_options": ["--comment=x"]}, "--comment is set by the operator"),
        ({"extra_options": ["qos=high"]}, "must start with '-'"),
        ({"extra_options": ["--qos=high\n--x"]}, "single line"),
        ({"poll_interval": 0}, "poll_interval=0"),
    ],
)
def test_invalid_arguments_are_refused_at_parse_time(kwargs: dict, words: str) -> None:
    with pytest.raises(JobSpecError) as error:
        operator(**kwargs)
    assert words in str(error.value)


def test_a_command_or_a_script_is_required_but_not_both() -> None:
    with pytest.raises(JobSpecError, match="exactly one of command= or script="):
        SlurmSubmitOperator(task_id="t")
    with pytest.raises(JobSpecError, match="exactly one of command= or script="):
        SlurmSubmitOperator(task_id="t", command="true", script="#!/bin/bash\ntrue\n")


def test_valid_arguments_are_normalised_once() -> None:
    op = operator(memory="4G", time_limit="1-12:00:00", cpus=4, partition="debug,long", gpus=1, gres="gpu:a100:1")
    res = op.job_resources
    assert res.memory_mb == 4096
    assert res.time_limit == timedelta(days=1, hours=12)
    assert (res.cpus, res.partition, res.gpus, res.gres) == (4, "debug,long", 1, "gpu:a100:1")


def test_templated_fields_are_those_a_dag_author_expects_to_render() -> None:
    assert set(SlurmSubmitOperator.template_fields) >= {"command", "script", "env", "setup", "job_name"}


def test_a_dag_with_a_bad_value_fails_to_import_with_the_reason(tmp_path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag_file = tmp_path / "bad_dag.py"
    dag_file.write_text(
        "from datetime import datetime\n"
        "from airflow.sdk import DAG\n"
        "from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator\n"
        "with DAG('bad', schedule=None, start_date=datetime(2026, 1, 1)):\n"
        "    SlurmSubmitOperator(task_id='t', command='true', memory='12XB')\n"
    )
    bag = DagBag(dag_folder=str(dag_file))
    assert "bad" not in bag.dags
    (error,) = bag.import_errors.values()
    assert "memory='12XB' is not a memory size" in error
