"""Layered env rules reach Slurm, PBS and Grid Engine jobs verbatim, and never their scripts."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tests.integration import cluster
from tests.integration.conftest import EXAMPLE_DAGS, DagRunResult
from tests.integration.dags.env_rules_scenarios import BASE, CONNECTION_RULES, INJECTED

pytestmark = pytest.mark.cluster

_runs: dict[str, DagRunResult] = {}


def _with_rules(connection_json: str) -> str:
    connection = json.loads(connection_json)
    connection["extra"] = {**connection["extra"], **CONNECTION_RULES}
    return json.dumps(connection)


@pytest.fixture
def env_rules_run(run_dag, cluster_env: dict[str, str]) -> DagRunResult:
    """The one run of ``it_env_rules`` (a Slurm and a Grid Engine task), shared by the tests."""
    if "run" not in _runs:
        if "AIRFLOW_CONN_SGE_LOCAL" not in cluster_env:
            pytest.fail("the test cluster has no Grid Engine: bring it up with tests/cluster/up.sh (HPCINFRA_SGE=1)")
        cluster.ssh(f"rm -f {INJECTED}")
        Path(INJECTED).unlink(missing_ok=True)
        _runs["run"] = run_dag(
            "it_env_rules",
            env={
                "AIRFLOW_CONN_SLURM_ENV_RULES": _with_rules(cluster_env["AIRFLOW_CONN_SLURM_LOCAL"]),
                "AIRFLOW_CONN_PBS_ENV_RULES": _with_rules(cluster_env["AIRFLOW_CONN_PBS_LOCAL"]),
                "AIRFLOW_CONN_SGE_ENV_RULES": _with_rules(cluster_env["AIRFLOW_CONN_SGE_LOCAL"]),
            },
        )
    return _runs["run"]


def _task_part(result: DagRunResult, task_id: str) -> str:
    part = re.search(
        rf"\[DAG TEST\] starting task_id={task_id} .*?\[DAG TEST\] end task task_id={task_id} ", result.output, re.S
    )
    assert part, f"task {task_id} did not run to its end:\n{result.output[-4000:]}"
    return part.group(0)


def _reported(part: str) -> dict[str, str]:
    found: dict[str, str] = {}
    # A job's output line in the task log: "<time> [info     ] NAME=value [<logger>] loc=...".
    for name, value in re.findall(r"\] ([A-Z_]+)=(\S*)\s+\[airflow", part):
        found.setdefault(name, value)
    return found


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


DERIVED = BASE + "|tools"
TASK_VALUE = DERIVED + f"\n$(touch {INJECTED}) trailing\n"


@pytest.mark.parametrize(
    ("task_id", "conn_id", "conditional", "skipped"),
    [
        ("slurm", "slurm_env_rules", {"ON_SLURM_DEBUG": "slurm `debug` $(x)"}, "ON_SGE_QUEUE"),
        ("pbs", "pbs_env_rules", {}, "ON_SLURM_DEBUG"),
        ("sge", "sge_env_rules", {"ON_SGE_QUEUE": "sge 'all.q'"}, "ON_SLURM_DEBUG"),
    ],
)
def test_rules_of_the_connection_two_groups_and_the_task_reach_the_job_verbatim_in_order(
    env_rules_run: DagRunResult, task_id: str, conn_id: str, conditional: dict[str, str], skipped: str
) -> None:
    assert env_rules_run.succeeded, env_rules_run.output[-6000:]
    part = _task_part(env_rules_run, task_id)
    seen = _reported(part)
    expected = {"BASE": BASE, "DERIVED": DERIVED, "TASK_VALUE": TASK_VALUE, "PLAIN": "plain $(value)", **conditional}
    for name, value in expected.items():
        assert seen.get(name) == _b64(value), f"{name} did not arrive verbatim on {task_id}: {seen.get(name)}"
    # Conditions that do not hold, and a group the task did not pick, set nothing.
    for name in (skipped, "ON_GPU", "NEVER"):
        assert seen.get(name) == "unset", f"{name} should not be set on {task_id}"
    # Prepends in layer order before the node's own PATH (still there: bash, base64 ran), the append after it.
    path = seen["PATH"]
    assert path.startswith("/opt/task/bin:/opt/conn/bin:"), path
    assert path.endswith(":/opt/tools/bin"), path
    assert "/usr/bin" in path.split(":")[2:-1], path
    assert seen["CARRIERS_LEFT"] == "0"
    assert "init line of the connection" in part
    # Names and the layers that set them are logged; values never.
    assert (
        f"PATH (prepend by connection {conn_id}, append by group tools, prepend by task; joined with the node value)"
        in part
    )
    assert "DERIVED (set by group tools)" in part and "PLAIN (set by the task's env)" in part
    assert "skipped: group site rule 1 (ON_GPU; when partition gpu*)" in part
    script = part.split("Batch script:")[1].split("Pausing task")[0]
    for text in ("quoted", "touch", "/opt/conn/bin", "/opt/tools/bin", "tools", "plain", "all.q'", "`debug`"):
        assert text not in script, f"{text!r} is in the rendered script of {task_id}"
    assert cluster.ssh(f"test -e {INJECTED} && echo yes || echo no").strip() == "no"
    assert not Path(INJECTED).exists()


def test_the_example_env_rules_dag_runs_against_the_local_cluster(run_dag, cluster_env: dict[str, str]) -> None:
    from example_dags.env_rules import example_connection_extra

    connection = json.loads(cluster_env["AIRFLOW_CONN_SLURM_LOCAL"])
    connection["extra"] = {**connection["extra"], **example_connection_extra()}
    result = run_dag(
        "example_env_rules", dags_folder=EXAMPLE_DAGS, env={"AIRFLOW_CONN_SLURM_LOCAL": json.dumps(connection)}
    )
    assert result.succeeded, result.output[-4000:]
    assert "analysis tools found at /opt/analysis/bin" in result.output
    # The task's rule was rendered (Jinja) and expanded a group's variable; the gpu group was skipped.
    assert re.search(
        r"results go to /tmp/airflow-hpc-scratch/results \(run manual__\S+ of /tmp/airflow-hpc-scratch/results\), "
        r"4 threads",
        result.output,
    ), result.output[-4000:]
    assert "CUDA cache: not set off the gpu partitions" in result.output
    assert "skipped: group gpu rule 1 (init; when partition gpu*)" in result.output
