"""``@task.slurm`` and ``@task.pbs`` as a DAG author meets them: registered, and checked at parse time."""

from __future__ import annotations

from datetime import datetime

import pytest
from airflow.sdk import DAG, task

from airflow_hpc_provider.decorators.pbs import PbsPythonOperator
from airflow_hpc_provider.decorators.slurm import SlurmPythonOperator
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.get_provider_info import get_provider_info


def test_the_provider_registers_its_task_decorators_and_airflow_finds_them() -> None:
    names = {entry["name"] for entry in get_provider_info()["task-decorators"]}
    assert {"slurm", "pbs"} <= names
    with DAG("decorators", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.slurm(slurm_conn_id="hpc", cpus=2, memory="1G", setup=["module load python/3.11"])
        def on_slurm(x: int) -> int:
            return x

        @task.pbs(pbs_conn_id="pbs", cpus=2)
        def on_pbs(x: int) -> int:
            return x

        slurm_task = on_slurm(1).operator
        pbs_task = on_pbs(1).operator
    assert isinstance(slurm_task, SlurmPythonOperator) and isinstance(pbs_task, PbsPythonOperator)
    assert slurm_task.job_resources.cpus == 2 and slurm_task.setup == ["module load python/3.11"]
    assert "op_kwargs" in slurm_task.template_fields and "command" not in slurm_task.template_fields


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"command": "echo hi"}, "command= is not for a decorated function"),
        ({"python": "python3\nrm -rf ~"}, "give one interpreter"),
        ({"cleanup": "never"}, "cleanup='never'"),
        ({"cpus": "many"}, "cpus"),
    ],
)
def test_arguments_that_cannot_work_fail_when_the_dag_is_parsed(arguments: dict[str, object], message: str) -> None:
    with DAG("refusals", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.slurm(slurm_conn_id="hpc", **arguments)
        def function() -> None:
            return None

        with pytest.raises(JobSpecError, match=message):
            function()
