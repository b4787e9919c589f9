"""The [hpc] section of airflow.cfg: deployment-wide defaults under every connection and task."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from airflow_hpc_provider.config import default_array_window_s, default_log_dir, default_poll_interval_s
from airflow_hpc_provider.errors import ConnectionConfigError
from airflow_hpc_provider.get_provider_info import get_provider_info
from airflow_hpc_provider.hooks.pbs import PbsClusterDefaults
from airflow_hpc_provider.hooks.slurm import ClusterDefaults


def test_built_in_defaults_hold_when_the_deployment_says_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__HPC__DEFAULT_POLL_INTERVAL", raising=False)
    monkeypatch.delenv("AIRFLOW__HPC__REMOTE_LOG_DIR", raising=False)
    monkeypatch.delenv("AIRFLOW__HPC__ARRAY_WINDOW", raising=False)
    assert default_poll_interval_s() == 10.0
    assert default_log_dir() == ".airflow-hpc/logs"
    assert default_array_window_s() == 10.0


def test_the_deployment_sets_the_poll_interval_and_log_directory_connections_leave_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__HPC__DEFAULT_POLL_INTERVAL", "30")
    monkeypatch.setenv("AIRFLOW__HPC__REMOTE_LOG_DIR", "/scratch/airflow/logs")
    assert default_poll_interval_s() == 30.0
    assert ClusterDefaults.from_extra("c", {}).log_dir == "/scratch/airflow/logs"
    assert ClusterDefaults.from_extra("c", {"log_dir": ""}).log_dir == "/scratch/airflow/logs"
    assert PbsClusterDefaults.from_extra("c", {}).log_dir == "/scratch/airflow/logs"
    assert ClusterDefaults.from_extra("c", {"log_dir": "mine"}).log_dir == "mine"  # the connection wins


def test_a_deployment_log_directory_with_percent_signs_is_refused_like_a_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__HPC__REMOTE_LOG_DIR", "logs/%j")
    with pytest.raises(ConnectionConfigError, match="may not contain %"):
        ClusterDefaults.from_extra("c", {})


@pytest.mark.parametrize("bad", ["0", "-5", "soon"])
@pytest.mark.parametrize(
    ("option", "read"), [("default_poll_interval", default_poll_interval_s), ("array_window", default_array_window_s)]
)
def test_seconds_that_are_not_positive_are_refused_naming_the_option(
    monkeypatch: pytest.MonkeyPatch, bad: str, option: str, read: Callable[[], float]
) -> None:
    monkeypatch.setenv(f"AIRFLOW__HPC__{option.upper()}", bad)
    with pytest.raises(ConnectionConfigError, match=rf"\[hpc\] {option}="):
        read()


def test_the_connection_form_does_not_save_a_log_directory_that_would_hide_the_deployments() -> None:
    for kind in get_provider_info()["connection-types"]:
        assert "default" not in kind["conn-fields"]["log_dir"]["schema"], kind["connection-type"]


def test_the_config_section_airflow_reads_names_every_option_the_code_reads() -> None:
    options = get_provider_info()["config"]["hpc"]["options"]
    assert set(options) == {"default_poll_interval", "remote_log_dir", "default_deferrable", "array_window"}
    assert options["default_deferrable"]["default"] == "True"
