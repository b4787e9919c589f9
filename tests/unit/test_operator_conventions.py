"""The Airflow conventions every operator of this provider follows (operators/base.py), without a cluster."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobState, JobStatus
from airflow_hpc_provider.operators.batch import BatchRevisionOperator
from airflow_hpc_provider.operators.ec2 import Ec2EphemeralOperator
from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.operators.sge import SgeOperator
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator
from airflow_hpc_provider.operators.slurm_tenant import SlurmTenantOperator

OPERATORS = {
    "slurm": lambda **kw: SlurmSubmitOperator(task_id="t", command="true", **kw),
    "pbs": lambda **kw: PbsOperator(task_id="t", command="true", **kw),
    "sge": lambda **kw: SgeOperator(task_id="t", command="true", **kw),
    "tenant": lambda **kw: SlurmTenantOperator(task_id="t", reservation="pool", command="true", **kw),
    "batch": lambda **kw: BatchRevisionOperator(task_id="t", command="true", image="alpine:3", **kw),
    "ec2": lambda **kw: Ec2EphemeralOperator(task_id="t", image="alpine:3", command="true", time_limit=5, **kw),
}


@pytest.fixture(autouse=True)
def no_deployment_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", raising=False)
    monkeypatch.delenv("AIRFLOW__HPC__DEFAULT_DEFERRABLE", raising=False)


# -- deferrable --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", OPERATORS.values(), ids=list(OPERATORS))
def test_every_operator_defers_unless_the_deployment_or_the_task_says_otherwise(make, monkeypatch) -> None:
    assert make().deferrable is True
    assert make(deferrable=False).deferrable is False
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert make().deferrable is False
    assert make(deferrable=True).deferrable is True


def test_the_hpc_section_turns_deferral_off_and_airflows_environment_variable_wins_over_it(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__HPC__DEFAULT_DEFERRABLE", "False")
    assert OPERATORS["slurm"]().deferrable is False
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    assert OPERATORS["slurm"]().deferrable is True


def test_the_false_airflow_writes_into_every_airflow_cfg_does_not_turn_deferral_off() -> None:
    from airflow.sdk import conf

    previous = conf.get("operators", "default_deferrable")
    conf.set("operators", "default_deferrable", "False")  # as in a generated airflow.cfg
    try:
        assert OPERATORS["slurm"]().deferrable is True
    finally:
        conf.set("operators", "default_deferrable", previous)


# -- skip_on_exit_code -------------------------------------------------------------------------------


def status(state: JobState, exit_code: int | None, signal: int | None = 0) -> JobStatus:
    return JobStatus(job_id="7", state=state, native_state=state.value, exit_code=exit_code, signal=signal)


@pytest.mark.parametrize("make", OPERATORS.values(), ids=list(OPERATORS))
def test_skip_on_exit_code_takes_one_code_or_a_list_and_refuses_anything_else(make) -> None:
    assert make().skip_on_exit_code == frozenset()
    assert make(skip_on_exit_code=99).skip_on_exit_code == {99}
    assert make(skip_on_exit_code=[99, 100]).skip_on_exit_code == {99, 100}
    for bad in ("99", [99, "x"], 256, -1, True):
        with pytest.raises(JobSpecError, match="skip_on_exit_code="):
            make(skip_on_exit_code=bad)


@pytest.mark.parametrize(
    ("ended", "skipped"),
    [
        (status(JobState.FAILED, 99), True),
        (status(JobState.COMPLETED, 0), False),
        (status(JobState.FAILED, 3), False),
        (status(JobState.FAILED, 99, signal=9), False),  # killed, whatever the code says
        (status(JobState.TIMEOUT, 99), False),
        (status(JobState.CANCELLED, 99), False),
        (status(JobState.FAILED, None), False),
    ],
)
def test_only_a_job_that_exited_on_its_own_with_a_listed_code_is_skipped(ended: JobStatus, skipped: bool) -> None:
    op = OPERATORS["slurm"](skip_on_exit_code=[99, 100])
    if skipped:
        with pytest.raises(AirflowSkipException, match="Slurm job 7 exited 99, which skip_on_exit_code"):
            op.skip_if_asked(ended, "Slurm job 7")
    else:
        op.skip_if_asked(ended, "Slurm job 7")


def test_zero_in_skip_on_exit_code_skips_a_successful_job_as_bash_operator_does() -> None:
    with pytest.raises(AirflowSkipException):
        OPERATORS["pbs"](skip_on_exit_code=0).skip_if_asked(status(JobState.COMPLETED, 0), "PBS job 7")


# -- templated resources and connection ids ------------------------------------------------------------


def render(op: Any, **params: Any) -> None:
    op.render_template_fields({"params": params, "run_id": "manual__1", "ds": "2026-01-01"})


def test_templated_resources_wait_for_rendering_and_literal_ones_are_still_checked_at_parse_time() -> None:
    op = SlurmSubmitOperator(
        task_id="t",
        command="true",
        slurm_conn_id="{{ params.cluster }}",
        partition="{{ params.partition }}",
        account="proj1",
        cpus="{{ params.cpus }}",
        memory="{{ params.memory }}",
        time_limit="{{ params.minutes }}",
        gpus="{{ params.gpus }}",
    )
    assert op.job_resources.cpus is None and op.job_resources.account == "proj1"
    render(op, cluster="gpu_cluster", partition="gpu", cpus=8, memory="32G", minutes=90, gpus="")
    assert op.slurm_conn_id == "gpu_cluster"
    res = op.job_resources
    assert (res.partition, res.account, res.cpus, res.memory_mb) == ("gpu", "proj1", 8, 32768)
    assert (res.time_limit, res.gpus) == (timedelta(minutes=90), None)  # an empty rendering: not given


@pytest.mark.parametrize(
    ("argument", "value", "words"),
    [
        ("cpus", "lots", "cpus='lots' must be a whole number of at least 1"),
        ("memory", "12XB", "memory='12XB' is not a memory size"),
        ("partition", "gpu queue", "partition='gpu queue' is not a name or comma-separated names"),
        ("time_limit", "tomorrow", "time_limit='tomorrow' is not a time limit"),
    ],
)
def test_a_template_that_renders_to_a_bad_value_fails_with_the_parse_time_message_and_no_retry(
    argument: str, value: str, words: str
) -> None:
    with pytest.raises(JobSpecError) as at_parse_time:
        SlurmSubmitOperator(task_id="t", command="true", **{argument: value})
    op = SlurmSubmitOperator(task_id="t", command="true", **{argument: "{{ params.value }}"})
    with pytest.raises(JobSpecError) as after_rendering:
        render(op, value=value)
    assert words in str(at_parse_time.value)
    assert str(after_rendering.value) == str(at_parse_time.value)
    assert isinstance(after_rendering.value, AirflowFailException)


def test_pbs_checks_its_templated_queue_and_one_queue_partition_after_rendering() -> None:
    op = PbsOperator(task_id="t", command="true", pbs_conn_id="{{ params.c }}", pbs_queue="{{ params.q }}")
    render(op, c="pbs_prod", q="batch")
    assert (op.pbs_conn_id, op.pbs_queue) == ("pbs_prod", "batch")
    with pytest.raises(JobSpecError, match="pbs_queue='a;b'"):
        render(PbsOperator(task_id="t", command="true", pbs_queue="{{ params.q }}"), q="a;b")
    with pytest.raises(JobSpecError, match="PBS takes one queue"):
        render(PbsOperator(task_id="t", command="true", partition="{{ params.p }}"), p="a,b")


def test_a_connection_id_that_renders_empty_is_refused() -> None:
    with pytest.raises(JobSpecError, match="connection id rendered to ''"):
        render(SlurmSubmitOperator(task_id="t", command="true", slurm_conn_id="{{ params.c }}"), c="")


# -- script files ---------------------------------------------------------------------------------------


@pytest.fixture
def dag_folder(tmp_path: Path) -> Path:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "train.sbatch").write_text(
        "#!/bin/bash\n#SBATCH --cpus-per-task=4\necho 'epochs={{ params.epochs }}'\n"
    )
    return tmp_path


def test_a_script_file_on_the_template_path_is_read_and_rendered_keeping_its_last_newline(dag_folder) -> None:
    with DAG("d", schedule=None, start_date=datetime(2026, 1, 1), template_searchpath=[str(dag_folder)]):
        op = SlurmSubmitOperator(task_id="t", script="jobs/train.sbatch")
    render(op, epochs=3)
    assert op.script == "#!/bin/bash\n#SBATCH --cpus-per-task=4\necho 'epochs=3'\n"


def test_the_dag_processor_reads_only_the_script_as_a_file(dag_folder) -> None:
    (dag_folder / "env.sh").write_text("this file must not replace a setup line\n")
    with DAG("d", schedule=None, start_date=datetime(2026, 1, 1), template_searchpath=[str(dag_folder)]):
        op = SlurmSubmitOperator(task_id="t", script="jobs/train.sbatch", setup=["env.sh"])
    op.resolve_template_files()
    assert op.script.startswith("#!/bin/bash\n#SBATCH --cpus-per-task=4")
    assert op.setup == ["env.sh"]


def test_a_command_or_env_value_that_ends_in_sh_is_text_for_the_cluster_not_a_file_here(dag_folder) -> None:
    with DAG("d", schedule=None, start_date=datetime(2026, 1, 1), template_searchpath=[str(dag_folder)]):
        op = SlurmSubmitOperator(
            task_id="t", command="bash {{ params.name }}.sh", env={"ENTRY": "run.sh"}, setup=["source env.sh"]
        )
    render(op, name="train")
    assert op.command == "bash train.sh"
    assert op.env == {"ENTRY": "run.sh"} and op.setup == ["source env.sh"]


def test_a_script_text_that_ends_in_a_script_name_is_text(dag_folder) -> None:
    with DAG("d", schedule=None, start_date=datetime(2026, 1, 1), template_searchpath=[str(dag_folder)]):
        op = SlurmSubmitOperator(task_id="t", script="#!/bin/bash\n./run.sh")
    render(op)
    assert op.script == "#!/bin/bash\n./run.sh"


def test_a_missing_script_file_says_where_it_was_looked_for(dag_folder) -> None:
    with DAG("d", schedule=None, start_date=datetime(2026, 1, 1), template_searchpath=[str(dag_folder)]):
        op = PbsOperator(task_id="t", script="jobs/missing.pbs")
    with pytest.raises(JobSpecError, match=r"script='jobs/missing.pbs' ends like a script file, but no such") as error:
        render(op)
    assert str(dag_folder) in str(error.value)


# -- XCom -----------------------------------------------------------------------------------------------


class RecordingTaskInstance:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.mark.parametrize("do_xcom_push", [True, False])
def test_xcom_pushes_beside_the_return_value_honour_do_xcom_push(do_xcom_push: bool) -> None:
    ti = RecordingTaskInstance()
    OPERATORS["slurm"](do_xcom_push=do_xcom_push).push_xcom({"ti": ti}, "slurm_job_id", "7")  # type: ignore[typeddict-item]
    assert ti.pushed == ({"slurm_job_id": "7"} if do_xcom_push else {})


# -- console links ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("partition", "domain"),
    [("aws", "aws.amazon.com"), ("aws-cn", "amazonaws.cn"), ("aws-us-gov", "amazonaws-us-gov.com")],
)
def test_batch_console_links_follow_the_connections_partition(partition: str, domain: str) -> None:
    from airflow_hpc_provider.links.batch import BatchJobLink, BatchLogLink

    ti = RecordingTaskInstance()
    op = OPERATORS["batch"]()
    BatchJobLink.persist({"ti": ti}, op, "eu-west-1", partition, job_id="j-1")  # type: ignore[arg-type]
    BatchLogLink.persist({"ti": ti}, op, "eu-west-1", partition, log_group="/aws/batch/job", log_stream="d/x/1")  # type: ignore[arg-type]
    job = BatchJobLink().format_link(**ti.pushed[BatchJobLink.key])
    logs = BatchLogLink().format_link(**ti.pushed[BatchLogLink.key])
    assert job == f"https://console.{domain}/batch/home?region=eu-west-1#jobs/detail/j-1"
    assert logs == (
        f"https://console.{domain}/cloudwatch/home?region=eu-west-1#logsV2:log-groups/log-group/"
        "$252Faws$252Fbatch$252Fjob/log-events/d$252Fx$252F1"
    )


def test_batch_console_links_store_nothing_when_the_task_pushes_no_xcom() -> None:
    from airflow_hpc_provider.links.batch import BatchJobLink

    ti = RecordingTaskInstance()
    BatchJobLink.persist({"ti": ti}, OPERATORS["batch"](do_xcom_push=False), "eu-west-1", "aws", job_id="j")  # type: ignore[arg-type]
    assert ti.pushed == {}
