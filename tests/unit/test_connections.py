"""How Airflow connections become SSH targets and cluster defaults, and what the admin UI is told."""

from __future__ import annotations

import json
from types import SimpleNamespace

import asyncssh
import pytest

from airflow_hpc_provider.errors import ConnectionConfigError
from airflow_hpc_provider.get_provider_info import get_provider_info
from airflow_hpc_provider.hooks.slurm import DEFAULT_LOG_DIR, ClusterDefaults
from airflow_hpc_provider.hooks.ssh import JumpHost, SshTarget


def connection(extra: dict | None = None, **fields) -> SimpleNamespace:
    values = {"conn_id": "c", "host": "login1", "port": None, "login": "alice", "password": None, **fields}
    return SimpleNamespace(**values, extra_dejson=extra or {})


def test_host_keys_are_verified_unless_the_connection_opts_out_in_so_many_words() -> None:
    assert SshTarget.from_connection(connection()).verify_host_key
    assert SshTarget.from_connection(connection({"no_host_key_check": "false"})).verify_host_key
    assert not SshTarget.from_connection(connection({"no_host_key_check": True})).verify_host_key
    assert SshTarget.from_connection(connection({"no_host_key_check": True})).known_hosts_option() is None


def test_an_unclear_yes_no_value_is_an_error_not_a_guess() -> None:
    with pytest.raises(ConnectionConfigError, match="no_host_key_check='sometimes'"):
        SshTarget.from_connection(connection({"no_host_key_check": "sometimes"}))


def test_the_ssh_providers_extras_are_honoured(tmp_path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id"
    key.write_private_key(str(key_file), passphrase="pw")
    server_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    target = SshTarget.from_connection(
        connection(
            {"key_file": str(key_file), "private_key_passphrase": "pw", "conn_timeout": "7", "host_key": server_key},
            port=2200,
        )
    )
    options = target.connect_options()
    assert options["connect_timeout"] == 7.0
    assert options["port"] == 2200 and options["username"] == "alice"
    assert len(options["client_keys"]) == 1
    assert isinstance(options["known_hosts"], asyncssh.SSHKnownHosts)


def test_a_pasted_key_is_loaded_and_a_broken_one_is_reported_without_its_content() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    assert SshTarget.from_connection(connection({"private_key": key})).client_keys()
    with pytest.raises(ConnectionConfigError) as error:
        SshTarget.from_connection(connection({"private_key": "-----BEGIN NONSENSE-----"})).client_keys()
    assert "NONSENSE" not in str(error.value)


def test_secrets_stay_out_of_the_targets_repr() -> None:
    target = SshTarget.from_connection(connection({"private_key_passphrase": "s3cret"}, password="hunter2"))
    assert "s3cret" not in repr(target) and "hunter2" not in repr(target)


def test_a_certificate_without_its_key_is_refused() -> None:
    with pytest.raises(ConnectionConfigError, match="certificate needs its private key"):
        SshTarget.from_connection(connection({"certificate": "/etc/ssh/user-cert.pub"})).client_keys()


def test_a_jump_host_is_read_as_openssh_writes_it() -> None:
    assert JumpHost.parse("bob@bastion:2022") == JumpHost("bastion", 2022, "bob")
    assert JumpHost.parse("bastion") == JumpHost("bastion", 22, None)
    with pytest.raises(ConnectionConfigError):
        JumpHost.parse("bob@bastion:ssh")


def test_login_shell_changes_the_shell_that_reads_our_scripts() -> None:
    assert SshTarget.from_connection(connection()).shell_command == "sh -s"
    assert SshTarget.from_connection(connection({"login_shell": "true"})).shell_command == "bash -l -s"


def test_cluster_defaults_are_read_and_checked() -> None:
    defaults = ClusterDefaults.from_extra(
        "c", {"account": "proj1", "partition": "gpu", "max_concurrent_jobs": "50", "poll_interval": 30}
    )
    assert defaults == ClusterDefaults("proj1", "gpu", 50, DEFAULT_LOG_DIR, 30.0)
    for bad in ({"max_concurrent_jobs": "0.5"}, {"max_concurrent_jobs": 0}, {"log_dir": "logs/%j"}, {"account": "a b"}):
        with pytest.raises(ConnectionConfigError):
            ClusterDefaults.from_extra("c", bad)


def test_the_admin_ui_gets_every_slurm_field_with_secrets_marked_sensitive() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    assert {"slurm", "pbs"} <= set(ProvidersManagerTaskRuntime().hooks)
    manager = ProvidersManager()
    widgets = manager.connection_form_widgets
    fields = {name.removeprefix("extra__slurm__"): info for name, info in widgets.items() if "__slurm__" in name}
    declared = get_provider_info()["connection-types"][0]["conn-fields"]
    assert set(fields) == set(declared)
    assert {name for name, info in fields.items() if info.is_sensitive} == {"private_key_passphrase"}
    assert fields["no_host_key_check"].field["value"] is False
    behaviour = manager.field_behaviours["slurm"]
    assert behaviour["relabeling"]["host"] == "Login node"


def test_a_pasted_private_key_gets_a_multi_line_field_and_is_masked_by_its_name() -> None:
    from airflow._shared.secrets_masker import redact

    declared = get_provider_info()["connection-types"][0]["conn-fields"]
    # A one-line (password) input drops a pasted key's line breaks; the form must offer a text area.
    assert declared["private_key"]["schema"]["format"] == "multiline"
    extra = {"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n", "private_key_passphrase": "pw"}
    assert redact(extra) == {"private_key": "***", "private_key_passphrase": "***"}


def test_the_provider_info_is_what_airflow_validates_against() -> None:
    import jsonschema
    from airflow import providers_manager

    schema_path = providers_manager.__file__.replace("providers_manager.py", "provider_info.schema.json")
    with open(schema_path) as schema:
        jsonschema.validate(get_provider_info(), json.load(schema))
