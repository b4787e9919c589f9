"""The Test button of ``slurm`` and ``pbs`` connections, against the real login node over real sshd.

Airflow's UI, REST API and ``airflow connections test`` all call ``Connection.test_connection()``,
which finds the hook by connection type and calls its ``test_connection()``: that is what runs here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncssh
import pytest
from airflow.models.connection import Connection

from airflow_hpc_provider.hooks.probe import SchedulerProbe
from airflow_hpc_provider.hooks.slurm import SlurmHook, SlurmProbe

pytestmark = pytest.mark.cluster


@pytest.fixture
def connection_named(cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Connection]:
    """Make a connection like the test cluster's ``slurm_local`` (or ``pbs_local``), with changes."""

    def make(name: str, *, kind: str = "slurm", extra: Mapping[str, Any] | None = None, **fields: Any) -> Connection:
        base = json.loads(cluster_env[f"AIRFLOW_CONN_{kind.upper()}_LOCAL"])
        spec = {**base, **fields, "extra": {**base["extra"], **(extra or {})}}
        monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", json.dumps(spec))
        return Connection.get_connection_from_secrets(name)

    return make


def test_a_good_slurm_connection_passes_and_names_the_version_and_partitions(connection_named) -> None:
    ok, message = connection_named("probe_good").test_connection()
    assert ok, message
    assert message.startswith("Connected to hpcuser@127.0.0.1:2222: slurm-wlm 22.05"), message
    assert "Partitions you may use: debug (default), long." in message
    assert "Accounts: myacct" in message


def test_a_good_pbs_connection_passes_and_lists_its_queues(connection_named) -> None:
    ok, message = connection_named("probe_pbs", kind="pbs").test_connection()
    assert ok, message
    assert "Torque-style PBS. Queues: debug, long." in message


def test_a_key_the_login_node_does_not_accept_says_authentication_failed(connection_named, tmp_path) -> None:
    stranger = tmp_path / "id_stranger"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    conn = connection_named("probe_wrong_key", extra={"key_file": str(stranger), "look_for_keys": False})
    ok, message = conn.test_connection()
    assert not ok
    assert message.startswith("Authentication failed: SSH to hpcuser@127.0.0.1:2222 refused: Permission denied")
    assert "authorized_keys" in message


def test_a_login_node_with_another_host_key_says_the_host_key_check_failed(connection_named) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    conn = connection_named("probe_host_key", extra={"known_hosts": f"[127.0.0.1]:2222 {impostor}"})
    ok, message = conn.test_connection()
    assert not ok
    assert message.startswith("Host key check failed:"), message
    assert "ssh-keyscan" in message


def test_a_port_nobody_listens_on_says_unreachable(connection_named) -> None:
    from tests.deployment.stack import free_port

    ok, message = connection_named("probe_closed", port=free_port()).test_connection()
    assert not ok
    assert message.startswith("Unreachable: cannot reach hpcuser@127.0.0.1:"), message
    assert "ConnectionRefusedError" in message


def test_a_default_partition_the_user_may_not_use_fails_with_the_partitions_they_may(connection_named) -> None:
    ok, message = connection_named("probe_partition", extra={"partition": "gpu_nowhere"}).test_connection()
    assert not ok
    assert "default partition 'gpu_nowhere' is not among them" in message
    assert "Partitions you may use: debug (default), long." in message


def test_a_default_account_that_is_not_the_users_fails_before_any_job_is_refused(connection_named) -> None:
    ok, message = connection_named("probe_account", extra={"account": "not_mine"}).test_connection()
    assert not ok
    assert "default account 'not_mine' is not one of yours" in message


def test_a_scheduler_command_missing_from_the_shells_path_is_named_with_the_fix(connection_named) -> None:
    @dataclass(frozen=True)
    class ProbeWithAMissingCommand(SlurmProbe):
        commands: tuple[str, ...] = ("sbatch", "sbatch-of-a-site-module")

    class ModuleLoadedSlurmHook(SlurmHook):
        def scheduler_probe(self, extra: Mapping[str, Any]) -> SchedulerProbe:
            return ProbeWithAMissingCommand()

    connection_named("probe_module")
    ok, message = ModuleLoadedSlurmHook("probe_module").test_connection()
    assert not ok
    assert "but sbatch-of-a-site-module is not on the PATH of the shell the provider uses there (sh -s)" in message
    assert "'Login shell'" in message


def test_a_connection_that_cannot_describe_a_cluster_says_why_instead_of_raising(connection_named) -> None:
    ok, message = connection_named("probe_no_host", host="").test_connection()
    assert not ok
    assert "has no host" in message
