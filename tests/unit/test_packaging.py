"""What a package index, pip and Airflow's Providers page learn about this package."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import airflow_hpc_provider
from airflow_hpc_provider import get_provider_info as provider_info_module
from airflow_hpc_provider.get_provider_info import DOCS_URL, get_provider_info

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def airflow_cli(*args: str, home: Path) -> str:
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    result = subprocess.run(
        [sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def listed_modules(info: dict[str, Any]) -> list[str]:
    return [
        module
        for kind in ("operators", "hooks", "triggers")
        for item in info[kind]
        for module in item["python-modules"]
    ]


def test_the_version_is_one_number_for_pip_airflow_and_the_code() -> None:
    assert importlib.metadata.version("airflow-hpc-provider") == airflow_hpc_provider.__version__
    assert get_provider_info()["versions"] == [airflow_hpc_provider.__version__]


def test_airflow_is_a_tested_floor_not_a_cap_and_no_unused_provider_is_required() -> None:
    requirements = PYPROJECT["project"]["dependencies"]
    airflow = next(line for line in requirements if line.startswith("apache-airflow"))
    assert airflow == "apache-airflow>=3.3.2"
    assert not any("providers" in line or "boto" in line for line in requirements), requirements
    assert {"aws", "test", "docs"} <= set(PYPROJECT["project"]["optional-dependencies"])


def test_the_package_says_where_its_docs_and_license_are() -> None:
    metadata = importlib.metadata.metadata("airflow-hpc-provider")
    urls = dict(entry.split(", ", 1) for entry in metadata.get_all("Project-URL") or [])
    assert urls["Documentation"] == DOCS_URL
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "Framework :: Apache Airflow :: Provider" in (metadata.get_all("Classifier") or [])
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert f"{airflow_hpc_provider.__version__} " in (REPO / "CHANGELOG.rst").read_text()


def test_airflow_providers_list_and_the_providers_page_show_the_docs_link(tmp_path: Path) -> None:
    from airflow.providers_manager import ProvidersManager

    assert ProvidersManager().providers["airflow-hpc-provider"].data["documentation-url"] == DOCS_URL
    listed = [line for line in airflow_cli("providers", "list", home=tmp_path).splitlines() if "airflow-hpc" in line]
    assert len(listed) == 1 and DOCS_URL in listed[0], listed


def test_the_hpc_section_of_airflow_cfg_is_known_to_airflow_with_its_defaults(tmp_path: Path) -> None:
    assert airflow_cli("config", "get-value", "hpc", "default_poll_interval", home=tmp_path).strip() == "10"
    assert airflow_cli("config", "get-value", "hpc", "remote_log_dir", home=tmp_path).strip() == ".airflow-hpc/logs"


def test_without_the_aws_extra_airflow_is_told_of_no_aws_module(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        provider_info_module.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "boto3" else real_find_spec(name, *args),
    )
    info = get_provider_info()
    listed = [
        module
        for kind in ("operators", "hooks", "triggers")
        for entry in info[kind]
        for module in entry["python-modules"]
    ]
    assert {entry["integration-name"] for entry in info["integrations"]} == {"Slurm", "PBS", "Grid Engine"}
    assert info["extra-links"] == []
    assert not any("batch" in module or "ec2" in module or "ssm" in module for module in listed)


def test_with_the_aws_extra_every_module_airflow_is_told_of_imports() -> None:
    info = get_provider_info()
    listed = [
        module
        for kind in ("operators", "hooks", "triggers")
        for entry in info[kind]
        for module in entry["python-modules"]
    ]
    assert "airflow_hpc_provider.operators.batch" in listed
    for module in listed:
        importlib.import_module(module)
    for link in info["extra-links"]:
        module, _, name = link.rpartition(".")
        assert getattr(importlib.import_module(module), name)
