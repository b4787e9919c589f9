"""Env rules: how they are checked at parse time, layered, and applied on the compute node."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from airflow_hpc_provider.env_rules import (
    ConnectionRules,
    JobEnvironment,
    Layer,
    layered_environment,
    parse_rules,
)
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.operators.sge import SgeOperator
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator


def _layers(*layers: tuple[str, list[dict[str, Any]]]) -> list[Layer]:
    return [Layer(label, parse_rules(rules, label)) for label, rules in layers]


def _run_on_node(environment: JobEnvironment, node_env: dict[str, str], shell: str = "sh") -> dict[str, str]:
    """Run the prelude the way a job does: carriers in the environment, lines in the script."""
    script = "\n".join(environment.prelude) + "\nenv -0\n"
    base = {"PATH": os.environ["PATH"], **node_env}
    env = {**base, **environment.variables}
    done = subprocess.run([shell, "-c", script], env=env, capture_output=True, check=True)
    pairs = [item.split(b"=", 1) for item in done.stdout.split(b"\0") if b"=" in item]
    return {name.decode(): value.decode() for name, value in pairs}


@pytest.mark.parametrize(
    ("rules", "words"),
    [
        ([{"name": "X"}], "neither sets, appends nor prepends"),
        ([{"name": "X", "set": "a", "append": "b"}], "does one of set, append, prepend"),
        ([{"set": "a"}], "has no 'name'"),
        ([{"name": "1X", "set": "a"}], "not a valid environment variable name"),
        ([{"name": "AIRFLOW_HPC_KEY", "set": "a"}], "the provider's own variables"),
        ([{"name": "X", "set": 3}], "must be a string"),
        ([{"name": "X", "set": "a", "separator": ";"}], "separator only goes with append or prepend"),
        ([{"name": "X", "set": "a", "when": {"colour": "red"}}], "when tests 'colour'"),
        ([{"name": "X", "set": "a", "when": {"partition": []}}], "non-empty list of patterns"),
        ([{"name": "X", "set": "${unclosed"}], "is not an expansion"),
        ([{"name": "X", "set": "${1bad}"}], "is not an expansion"),
        ([{"init": "module load a\nmodule load b"}], "must be one non-empty line"),
        ([{"nme": "X", "set": "a"}], "unknown key(s) ['nme']"),
        ([{}], "does nothing"),
        ({"name": "X", "set": "a"}, "give a list of rules"),
    ],
)
def test_a_bad_task_rule_fails_the_dag_at_parse_time_saying_what_is_wrong(rules: Any, words: str) -> None:
    for operator, conn in ((SlurmSubmitOperator, "slurm_conn_id"), (PbsOperator, "pbs_conn_id")):
        with pytest.raises(JobSpecError) as raised:
            operator(task_id="t", command="true", env_rules=rules, **{conn: "c"})
        assert words in str(raised.value) and "task 't'" in str(raised.value)


def test_bad_group_names_fail_at_parse_time_and_unknown_ones_when_the_connection_is_read() -> None:
    with pytest.raises(JobSpecError, match="names a group twice"):
        SgeOperator(task_id="t", sge_conn_id="c", command="true", env_groups=["a", "a"])
    with pytest.raises(JobSpecError, match="a list of names"):
        SgeOperator(task_id="t", sge_conn_id="c", command="true", env_groups=[""])
    connection = ConnectionRules.from_extra("cluster", {"env_groups": {"cuda": []}})
    with pytest.raises(JobSpecError, match=r"\['conda'\] are not groups of connection 'cluster' \(its groups: cuda\)"):
        connection.layers(["conda"], ())


def test_a_templated_rule_is_checked_once_rendered_not_at_parse_time() -> None:
    operator = SlurmSubmitOperator(
        task_id="t", slurm_conn_id="c", command="true", env_rules=[{"name": "X", "set": "{{ params.x }}"}]
    )
    assert "task_env_rules" in operator.template_fields


def test_connection_rules_saved_as_json_text_by_the_admin_form_are_read_and_checked() -> None:
    connection = ConnectionRules.from_extra(
        "cluster",
        {"env_rules": '[{"name": "A", "set": "1"}]', "env_groups": '{"g": [{"name": "B", "append": "2"}]}'},
    )
    assert [rule.name for rule in connection.rules] == ["A"]
    assert [rule.name for rule in connection.groups["g"]] == ["B"]
    with pytest.raises(JobSpecError, match=r"env rules of connection 'cluster'.*not JSON"):
        ConnectionRules.from_extra("cluster", {"env_rules": "[{oops"})
    with pytest.raises(JobSpecError, match="connection 'cluster', group 'g' \\(rule 1\\)"):
        ConnectionRules.from_extra("cluster", {"env_groups": {"g": [{"name": "B"}]}})


def test_layers_apply_in_order_later_set_wins_and_expansion_sees_earlier_rules() -> None:
    environment = layered_environment(
        _layers(
            ("connection c", [{"name": "ROOT", "set": "/scratch"}, {"name": "MODE", "set": "slow"}]),
            ("group g", [{"name": "DATA", "set": "${ROOT}/data"}, {"name": "MODE", "set": "fast"}]),
            ("task", [{"name": "OUT", "set": "${DATA}/out $${LITERAL} $HOME $(x)"}, {"name": "ROOT", "set": "/tmp"}]),
        ),
        {},
        {},
    )
    node = _run_on_node(environment, {})
    assert node["DATA"] == "/scratch/data"
    assert node["MODE"] == "fast"
    assert node["OUT"] == "/scratch/data/out ${LITERAL} $HOME $(x)"
    assert node["ROOT"] == "/tmp"


def test_the_tasks_env_is_the_last_layer_and_wins_over_every_rule() -> None:
    environment = layered_environment(_layers(("task", [{"name": "X", "set": "rule"}])), {}, {"X": "env"})
    assert _run_on_node(environment, {})["X"] == "env"
    assert "X (set by the task's env)" in environment.log_lines()


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_append_and_prepend_join_with_the_nodes_own_value_on_the_node(shell: str) -> None:
    environment = layered_environment(
        _layers(
            ("connection c", [{"name": "PYTHONPATH", "prepend": "/conn"}]),
            ("task", [{"name": "PYTHONPATH", "append": "/task"}, {"name": "PYTHONPATH", "prepend": "/first"}]),
        ),
        {},
        {},
    )
    assert all("/conn" not in line and "/task" not in line for line in environment.prelude)
    assert _run_on_node(environment, {"PYTHONPATH": "/node a:/node b"}, shell)["PYTHONPATH"] == (
        "/first:/conn:/node a:/node b:/task"
    )
    # Empty or unset on the node: the pieces alone, no empty entry (which would mean ".").
    assert _run_on_node(environment, {"PYTHONPATH": ""}, shell)["PYTHONPATH"] == "/first:/conn:/task"
    node = _run_on_node(environment, {}, shell)
    assert node["PYTHONPATH"] == "/first:/conn:/task"
    assert not [name for name in node if name.startswith("AIRFLOW_HPC_ENV_")]


def test_append_after_a_set_is_known_on_the_worker_and_a_separator_is_per_rule() -> None:
    environment = layered_environment(
        _layers(("task", [{"name": "FLAGS", "set": "-O2"}, {"name": "FLAGS", "append": "-g", "separator": " "}])),
        {},
        {},
    )
    assert _run_on_node(environment, {"FLAGS": "-node"})["FLAGS"] == "-O2 -g"


def test_expanding_a_variable_only_the_node_knows_or_no_rule_sets_is_a_clear_error() -> None:
    with pytest.raises(JobSpecError, match=r"uses \$\{PATH\}, whose value is only known on the compute node"):
        layered_environment(
            _layers(("task", [{"name": "PATH", "prepend": "/x"}, {"name": "Y", "set": "${PATH}"}])), {}, {}
        )
    with pytest.raises(JobSpecError, match=r"uses \$\{HOME\}, which no earlier rule sets"):
        layered_environment(_layers(("task", [{"name": "Y", "set": "${HOME}/x"}])), {}, {})


def test_conditions_match_shell_patterns_of_the_tasks_facts_and_skipped_rules_are_logged() -> None:
    rules = [
        {"name": "GPU", "set": "1", "when": {"partition": ["gpu*", "a100"]}},
        {"name": "BOTH", "set": "1", "when": {"scheduler": "slurm", "partition": "gpu-large"}},
        {"init": ["module load cuda"], "when": {"image": "*cuda*"}},
    ]
    on_gpu = layered_environment(_layers(("task", rules)), {"scheduler": "slurm", "partition": "gpu-large"}, {})
    assert [origin.name for origin in on_gpu.origins] == ["GPU", "BOTH"]
    assert "module load cuda" not in on_gpu.prelude
    on_cpu = layered_environment(_layers(("task", rules)), {"scheduler": "slurm", "partition": "cpu"}, {})
    assert on_cpu.origins == ()
    assert on_cpu.log_lines()[0] == "skipped: task rule 1 (GPU; when partition gpu*|a100)"


def test_init_lines_run_before_the_variables_are_applied() -> None:
    environment = layered_environment(
        _layers(("connection c", [{"name": "X", "set": "rule"}, {"init": ['echo "init saw ${X-nothing}" >&2']}])),
        {},
        {},
    )
    assert environment.prelude[0] == 'echo "init saw ${X-nothing}" >&2'
    assert not any(line.startswith("_airflow_hpc") for line in environment.prelude[:1])


def test_a_name_the_scheduler_sets_in_the_job_is_refused_with_its_reason() -> None:
    with pytest.raises(JobSpecError, match="env rules of task: 'SLURM_CONF' is refused: no"):
        layered_environment(_layers(("task", [{"name": "SLURM_CONF", "set": "x"}])), {}, {}, [("SLURM_*", "no")])


def test_the_log_names_variables_and_layers_never_values() -> None:
    secret = "s3cr3t-value"
    environment = layered_environment(
        _layers(("connection c", [{"name": "TOKEN", "set": secret}]), ("group g", [{"name": "PATH", "append": "/g"}])),
        {},
        {},
    )
    text = "\n".join(environment.log_lines())
    assert "TOKEN (set by connection c)" in text and "PATH (append by group g; joined with the node value)" in text
    assert secret not in text and "/g" not in text
    assert all(secret not in line for line in environment.prelude)


def test_every_ssh_cluster_connection_form_offers_the_rules_as_multi_line_json_fields() -> None:
    from airflow_hpc_provider.get_provider_info import get_provider_info

    for kind in get_provider_info()["connection-types"]:
        for key in ("env_rules", "env_groups"):
            assert kind["conn-fields"][key]["schema"]["format"] == "multiline", (kind["connection-type"], key)


@pytest.mark.parametrize(
    ("operator", "conn", "name"),
    [
        (SlurmSubmitOperator, "slurm_conn_id", "SLURM_CONF"),
        (SlurmSubmitOperator, "slurm_conn_id", "SBATCH_EXPORT"),
        (PbsOperator, "pbs_conn_id", "PBS_SERVER"),
        (SgeOperator, "sge_conn_id", "SGE_ROOT"),
    ],
)
def test_a_task_rule_for_a_name_the_scheduler_owns_fails_at_parse_time(operator: Any, conn: str, name: str) -> None:
    with pytest.raises(JobSpecError, match=f"env rules of task 't': '{name}' is refused"):
        operator(task_id="t", command="true", env_rules=[{"name": name, "set": "x"}], **{conn: "c"})


def test_path_which_env_may_not_touch_on_a_cluster_may_be_extended_by_a_rule() -> None:
    with pytest.raises(JobSpecError, match="env name 'PATH' is refused"):
        SlurmSubmitOperator(task_id="t", slurm_conn_id="c", command="true", env={"PATH": "/x"})
    SlurmSubmitOperator(task_id="t", slurm_conn_id="c", command="true", env_rules=[{"name": "PATH", "prepend": "/x"}])


def test_a_value_marked_secret_is_handed_to_airflows_masker_and_expansions_of_it_are_masked_too() -> None:
    from airflow.sdk._shared.secrets_masker import redact

    secret = f"tok-{os.getpid()}-s3cr3t"
    operator = SlurmSubmitOperator(
        task_id="t", slurm_conn_id="c", command="true", env_rules=[{"name": "URL", "set": "https://u:${TOKEN}@host"}]
    )
    extra = {"env_rules": [{"name": "TOKEN", "set": secret, "secret": True}]}
    environment = operator.layered_job_environment(conn_id="c", extra=extra, facts={}, env={})
    assert environment.secrets == (secret,)
    assert redact(f"the job printed https://u:{secret}@host") == "the job printed https://u:***@host"


def test_secret_must_be_a_boolean_on_a_rule_with_a_value() -> None:
    with pytest.raises(JobSpecError, match="secret must be true or false"):
        parse_rules([{"name": "X", "set": "a", "secret": "yes"}], "t")
    with pytest.raises(JobSpecError, match="an init-only rule has none"):
        parse_rules([{"init": "x", "secret": True}], "t")


def test_a_dag_file_with_a_bad_rule_fails_to_import_with_the_reason(tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag_file = tmp_path / "rules_dag.py"
    dag_file.write_text(
        "from datetime import datetime\n"
        "from airflow.sdk import DAG\n"
        "from airflow_hpc_provider.operators.sge import SgeOperator\n"
        "with DAG('bad_rules', schedule=None, start_date=datetime(2026, 1, 1)):\n"
        "    SgeOperator(task_id='t', command='true',\n"
        "                env_rules=[{'name': 'PATH', 'prepend': '/x', 'when': {'q': 'a'}}])\n"
    )
    bag = DagBag(dag_folder=str(dag_file))
    assert "bad_rules" not in bag.dags
    (error,) = bag.import_errors.values()
    assert "env rules of task 't' (rule 1): when tests 'q', which is none of ['scheduler'" in error
