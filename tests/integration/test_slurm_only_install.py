"""A Slurm/PBS-only install (``pip install airflow-hpc-provider``, no extra): no boto3, and Slurm jobs still run.

The test builds a fresh virtualenv beside the project's (uv, from its cache, pinned to the versions
the project's own venv holds, so it neither downloads nor resolves anew when the cache is warm),
installs this checkout into it without extras, proves boto3 and the amazon provider are absent,
and runs a SlurmSubmitOperator DAG through Airflow against the local cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import cluster

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def run(
    command: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, cwd="/")


@pytest.fixture(scope="module")
def slurm_only_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if UV is None:
        pytest.fail("uv is missing: scripts/install.sh puts it in .venv")
    home = tmp_path_factory.mktemp("slurm_only")
    venv = home / "venv"
    created = run([UV, "venv", "-q", "--python", sys.executable, str(venv)])
    assert created.returncode == 0, created.stderr
    # The project venv's versions, minus this package: the same resolution, served from uv's cache.
    frozen = run([UV, "pip", "freeze", "--python", sys.executable]).stdout.splitlines()
    constraints = home / "constraints.txt"
    constraints.write_text("\n".join(line for line in frozen if line and not line.startswith(("-e", "airflow-hpc"))))
    install = [UV, "pip", "install", "-q", "--python", str(venv / "bin/python"), "-c", str(constraints), str(REPO)]
    done = run([*install, "--offline"])
    if done.returncode != 0:  # a cold cache: resolve and fetch like any user would
        done = run(install, timeout_s=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    yield venv


def test_a_slurm_only_install_has_neither_boto3_nor_the_amazon_provider(slurm_only_venv: Path) -> None:
    python = str(slurm_only_venv / "bin/python")
    listed = run([UV or "uv", "pip", "list", "--python", python]).stdout.lower()
    assert "airflow-hpc-provider" in listed and "apache-airflow " in listed
    for absent in ("boto3", "botocore", "apache-airflow-providers-amazon", "apache-airflow-providers-ssh", "moto"):
        assert f"\n{absent} " not in listed, f"{absent} was installed:\n{listed}"
    names = ("boto3", "botocore", "airflow.providers.amazon")
    probe = f"import importlib.util as u; print([n for n in {names!r} if u.find_spec(n)])"
    assert run([python, "-c", probe]).stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["operators.batch", "operators.ec2", "decorators.batch"])
def test_importing_an_aws_operator_without_the_extra_says_which_extra_to_install(
    slurm_only_venv: Path, module: str
) -> None:
    result = run([str(slurm_only_venv / "bin/python"), "-c", f"import airflow_hpc_provider.{module}"])
    assert result.returncode != 0
    assert "ImportError: The AWS parts of airflow-hpc-provider (AWS Batch, EC2) need the 'aws' extra" in result.stderr
    assert "pip install 'airflow-hpc-provider[aws]'" in result.stderr


def test_a_slurm_only_install_runs_a_slurm_job_through_airflow(slurm_only_venv: Path, tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(REPO / "example_dags" / "slurm_hello.py", dags)
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith(("AIRFLOW", "VIRTUAL_ENV"))},
        **cluster.bring_up(),
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PATH": f"{slurm_only_venv / 'bin'}:{os.environ['PATH']}",
    }
    airflow = [str(slurm_only_venv / "bin/python"), "-m", "airflow"]
    providers = run([*airflow, "providers", "list"], env=env)
    assert providers.returncode == 0, providers.stderr[-3000:]
    assert "airflow-hpc-provider" in providers.stdout
    assert "No module named" not in providers.stdout + providers.stderr
    migrated = run([*airflow, "db", "migrate"], env=env)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    tested = run([*airflow, "dags", "test", "slurm_hello"], env=env, timeout_s=900)
    output = tested.stdout + tested.stderr
    assert tested.returncode == 0 and "state=success" in output, output[-4000:]
    assert output.count("step 3 of 3: values reach the job verbatim: $(not run) `nor this`") == 1
    assert "Pausing task as DEFERRED" in output
