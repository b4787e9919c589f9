"""A private key pasted into the connection form is read whatever became of its line breaks, or refused in words."""

from __future__ import annotations

from types import SimpleNamespace

import asyncssh
import pytest

from airflow_hpc_provider.errors import ConnectionConfigError
from airflow_hpc_provider.hooks.pasted_key import repair_pasted_key
from airflow_hpc_provider.hooks.ssh import SshTarget


def loaded_public_key(pasted: str, passphrase: str | None = None) -> bytes:
    conn = SimpleNamespace(
        conn_id="pasted",
        host="login1",
        port=None,
        login="alice",
        password=None,
        extra_dejson={"private_key": pasted, "private_key_passphrase": passphrase},
    )
    keys = SshTarget.from_connection(conn).client_keys()
    assert keys is not None and len(keys) == 1
    public: bytes = keys[0].export_public_key()
    return public


MANGLINGS = {
    "as pasted": lambda text: text,
    "line breaks as spaces": lambda text: text.replace("\n", " "),
    "line breaks dropped": lambda text: text.replace("\n", ""),
    "line breaks written as \\n": lambda text: text.replace("\n", "\\n"),
    "windows line breaks": lambda text: text.replace("\n", "\r\n"),
}
FORMATS = [("ssh-ed25519", "openssh", None), ("ssh-ed25519", "openssh", "pw"), ("ssh-rsa", "pkcs1-pem", None)]


@pytest.mark.parametrize("mangling", MANGLINGS, ids=list(MANGLINGS))
@pytest.mark.parametrize(("algorithm", "form", "passphrase"), FORMATS, ids=["openssh", "openssh+passphrase", "pem"])
def test_a_pasted_key_is_read_as_the_same_key_whatever_became_of_its_line_breaks(
    mangling: str, algorithm: str, form: str, passphrase: str | None
) -> None:
    key = asyncssh.generate_private_key(algorithm)
    text = key.export_private_key(form, passphrase=passphrase).decode()
    assert loaded_public_key(MANGLINGS[mangling](text), passphrase) == key.export_public_key()


def test_an_encrypted_pem_key_that_lost_its_line_breaks_is_refused_with_what_to_do_and_nothing_of_the_key() -> None:
    text = asyncssh.generate_private_key("ssh-rsa").export_private_key("pkcs1-pem", passphrase="pw").decode()
    mangled = text.replace("\n", " ")
    with pytest.raises(ConnectionConfigError) as refused:
        loaded_public_key(mangled, "pw")
    message = str(refused.value)
    assert "connection 'pasted': cannot load the private key" in message
    assert "paste it with its lines kept" in message and "ssh-keygen -p" in message
    body = text.splitlines()[4]
    assert body not in message


def test_a_key_pasted_with_its_line_breaks_is_left_exactly_as_it_is() -> None:
    text = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    assert repair_pasted_key(text) == text


def test_a_squashed_key_whose_body_is_not_base64_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConnectionConfigError, match="body is not base64") as refused:
        repair_pasted_key("-----BEGIN OPENSSH PRIVATE KEY----- s3cr3t!! -----END OPENSSH PRIVATE KEY-----")
    assert "s3cr3t" not in str(refused.value)
