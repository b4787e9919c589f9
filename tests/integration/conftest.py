from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import cluster

DAGS = Path(__file__).parent / "dags"
EXAMPLE_DAGS = Path(__file__).parents[2] / "example_dags"


@pytest.fixture(scope="session")
def cluster_env() -> dict[str, str]:
    return cluster.bring_up()


@pytest.fixture
def slurm_connection(cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The ``slurm_local`` Airflow connection, visible to hooks in this process."""
    monkeypatch.setenv("AIRFLOW_CONN_SLURM_LOCAL", cluster_env["AIRFLOW_CONN_SLURM_LOCAL"])
    return "slurm_local"


@pytest.fixture
def sge_connection(cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The ``sge_local`` Airflow connection (Grid Engine's test user), visible to hooks in this process."""
    if "AIRFLOW_CONN_SGE_LOCAL" not in cluster_env:
        # A missing Grid Engine is a broken test cluster, not a reason to pass quietly.
        pytest.fail("the test cluster has no Grid Engine: bring it up with tests/cluster/up.sh (HPCINFRA_SGE=1)")
    monkeypatch.setenv("AIRFLOW_CONN_SGE_LOCAL", cluster_env["AIRFLOW_CONN_SGE_LOCAL"])
    return "sge_local"


@dataclass(frozen=True)
class DagRunResult:
    returncode: int
    output: str

    @property
    def succeeded(self) -> bool:
        finished = re.search(r"DagRun Finished: .* state=(\w+)", self.output)
        return self.returncode == 0 and finished is not None and finished.group(1) == "success"


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory, cluster_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A throw-away Airflow on SQLite whose dags folder holds the scenario DAGs."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        **cluster_env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    yield env


@pytest.fixture
def run_dag(airflow_home: dict[str, str]):  # type: ignore[no-untyped-def]
    """Run one DAG with ``airflow dags test`` (real task runner, triggers inline); return its output."""

    def run(
        dag_id: str, *, dags_folder: Path = DAGS, timeout_s: float = 600, env: dict[str, str] | None = None
    ) -> DagRunResult:
        command = [sys.executable, "-m", "airflow", "dags", "test", dag_id]
        env = {**airflow_home, "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder), **(env or {})}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        return DagRunResult(result.returncode, result.stdout + result.stderr)

    return run
