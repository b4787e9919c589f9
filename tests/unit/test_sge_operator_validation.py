"""Bad input to SgeOperator fails when the DAG is parsed, in Grid Engine's terms."""

from __future__ import annotations

import pytest

from airflow_hpc_provider.errors import ConnectionConfigError, JobSpecError
from airflow_hpc_provider.hooks.sge import SgeClusterDefaults
from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.operators.sge import SgeOperator
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"gpus": 2}, "Grid Engine has no standard GPU request"),
        ({"gres": "gpu:1"}, "Grid Engine has no standard GPU request"),
        ({"nodes": 2}, "Grid Engine places slots, not nodes"),
        ({"sge_queue": "all q"}, "sge_queue='all q'"),
        ({"parallel_environment": "smp; rm"}, "parallel_environment='smp; rm'"),
        ({"extra_options": ["-t 1-10"]}, "asks for a job array (-t)"),
        ({"extra_options": ["-l h_rt=60 -t 1-3"]}, "asks for a job array (-t)"),
        ({"extra_options": ["-N other"]}, "-N is set by the operator"),
        ({"extra_options": ["-wd /tmp"]}, "-wd is set by the operator"),
        ({"env": {"SGE_ROOT": "/elsewhere"}}, "env name 'SGE_ROOT' is refused"),
        ({"script": "#!/bin/bash\n#$ -t 1-100\necho $SGE_TASK_ID\n", "command": None}, "#$ -t 1-100"),
        ({"time_limit": "soon"}, "time_limit='soon'"),
    ],
)
def test_invalid_grid_engine_arguments_are_refused_at_parse_time(kwargs: dict, words: str) -> None:
    arguments = {"command": "true", **kwargs}
    with pytest.raises(JobSpecError) as error:
        SgeOperator(task_id="t", **arguments)
    assert words in str(error.value)


def test_grid_engine_directives_are_only_grid_engine_business() -> None:
    # sbatch and the PBS qsubs read no '#$' line, and Grid Engine reads no '#SBATCH' or '#PBS' line.
    SlurmSubmitOperator(task_id="slurm", script="#!/bin/bash\n#$ -t 1-3\necho x\n")
    PbsOperator(task_id="pbs", script="#!/bin/bash\n#$ -t 1-3\necho x\n")
    SgeOperator(task_id="sge", script="#!/bin/bash\n#SBATCH --array=1-3\n#PBS -t 1-3\necho x\n")


def test_the_airflow_executor_queue_keeps_its_meaning() -> None:
    op = SgeOperator(task_id="t", command="true", queue="celery_gpu", sge_queue="all.q")
    assert op.queue == "celery_gpu" and op.sge_queue == "all.q"


def test_templated_grid_engine_values_are_checked_once_rendered() -> None:
    op = SgeOperator(task_id="t", command="true", sge_queue="{{ params.q }}", parallel_environment="{{ params.pe }}")
    op.sge_queue, op.parallel_environment = "all q", "smp"
    with pytest.raises(JobSpecError, match="sge_queue='all q'"):
        op.check_rendered()


def test_a_connection_reads_queue_project_and_parallel_environment_from_its_extra() -> None:
    extra = {"queue": "all.q", "project": "testproj", "parallel_environment": "smp", "poll_interval": "5"}
    defaults = SgeClusterDefaults.from_extra("sge_x", extra)
    assert (defaults.queue, defaults.project, defaults.parallel_environment, defaults.poll_interval_s) == (
        "all.q",
        "testproj",
        "smp",
        5.0,
    )


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"log_dir": "logs:here"}, "qsub -o reads"),
        ({"queue": "a queue"}, "queue='a queue'"),
        ({"parallel_environment": "$(x)"}, "parallel_environment='$(x)'"),
    ],
)
def test_a_connection_grid_engine_cannot_use_is_refused_naming_itself(extra: dict, words: str) -> None:
    with pytest.raises(ConnectionConfigError) as error:
        SgeClusterDefaults.from_extra("sge_x", extra)
    assert "connection 'sge_x'" in str(error.value) and words in str(error.value)


def test_airflow_knows_the_sge_connection_type_with_its_own_fields_and_login_node_form() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    assert "sge" in ProvidersManagerTaskRuntime().hooks
    manager = ProvidersManager()
    fields = {
        name.removeprefix("extra__sge__"): info
        for name, info in manager.connection_form_widgets.items()
        if "__sge__" in name
    }
    assert {"queue", "project", "parallel_environment", "log_dir", "key_file", "known_hosts"} <= set(fields)
    assert {name for name, info in fields.items() if info.is_sensitive} == {"private_key_passphrase"}
    assert manager.field_behaviours["sge"]["relabeling"]["host"] == "Login node"
