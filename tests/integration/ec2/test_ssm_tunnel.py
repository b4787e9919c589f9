"""The SSM tunnel hook through a real asyncssh client to the real local sshd, behind a stand-in ``aws``."""

from __future__ import annotations

import pytest

from airflow_hpc_provider.errors import ClusterAuthError, ClusterUnreachableError, SsmToolsMissingError
from airflow_hpc_provider.hooks.ssm import (
    SsmTransport,
    SsmTunnelHook,
    SsmTunnelTarget,
    find_tools,
)
from tests.integration.batch.moto_batch import MotoAws
from tests.integration.ec2.conftest import AMI, CONN_ID
from tests.integration.ec2.fake_ec2 import SSH_USER, FakeInstances, StandIns, local_host_key


def an_instance(aws: MotoAws, fake: FakeInstances, *, console: str | None = None) -> str:
    """An instance that does not boot anything; its console shows the local sshd's host key."""
    fake.boot = False
    instance_id = str(
        aws.client("ec2").run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    )
    fake.consoles[instance_id] = (
        console if console is not None else f"boot...\nAIRFLOW_HPC_HOST_KEY {local_host_key()}\n"
    )
    return instance_id


def target(instance_id: str, **kwargs: object) -> SsmTunnelTarget:
    return SsmTunnelTarget(instance_id=instance_id, aws_conn_id=CONN_ID, os_user=SSH_USER, **kwargs)  # type: ignore[arg-type]


async def test_a_command_runs_on_the_instance_through_the_ssh_session_document(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    instance_id = an_instance(aws_ec2, fake_instances)
    transport = SsmTransport(target(instance_id))
    try:
        result = await transport.run("printf 'hello from %s' \"$(id -un)\"\n")
        again = await transport.run("echo again\n")
    finally:
        await transport.close()
    assert result.exit_status == 0 and result.text == f"hello from {SSH_USER}"
    assert again.text.strip() == "again" and transport.connections_opened == 1
    calls = [call for call in stand_ins.aws_calls() if instance_id in call["argv"]]
    assert len(calls) == 1
    argv = calls[0]["argv"]
    assert argv[:2] == ["ssm", "start-session"]
    assert argv[argv.index("--target") + 1] == instance_id
    assert argv[argv.index("--document-name") + 1] == "AWS-StartSSHSession"
    assert argv[argv.index("--parameters") + 1] == "portNumber=22"
    assert argv[argv.index("--region") + 1] == "us-east-1"
    assert calls[0]["credentials"]  # the connection's credentials reach the CLI through its environment
    assert not any(aws_ec2.url in part and "testing" in part for part in argv)
    pushed = [p for p in fake_instances.pushed if p["instance"] == instance_id]
    assert len(pushed) == 1 and pushed[0]["user"] == SSH_USER and pushed[0]["key"].startswith("ssh-ed25519 ")
    assert transport.host_keys == (local_host_key(),)


async def test_every_new_connection_pushes_a_fresh_key(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    instance_id = an_instance(aws_ec2, fake_instances)
    transport = SsmTransport(target(instance_id))
    try:
        await transport.run("true\n")
        await transport.close()
        await transport.run("true\n")
    finally:
        await transport.close()
    keys = [p["key"] for p in fake_instances.pushed if p["instance"] == instance_id]
    assert len(keys) == 2 and keys[0] != keys[1]


async def test_the_port_forwarding_fallback_reaches_the_same_sshd(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    instance_id = an_instance(aws_ec2, fake_instances)
    transport = SsmTransport(target(instance_id, tunnel="port-forward"))
    try:
        result = await transport.run("echo forwarded\n")
    finally:
        await transport.close()
    assert result.text.strip() == "forwarded"
    argv = next(call["argv"] for call in stand_ins.aws_calls() if instance_id in call["argv"])
    assert argv[argv.index("--document-name") + 1] == "AWS-StartPortForwardingSession"
    assert argv[argv.index("--parameters") + 1].startswith("portNumber=22,localPortNumber=")


async def test_a_host_key_other_than_the_published_one_is_refused(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    impostor = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmdQFbf1b0cX2XG0W3uS3m6u2n4Vw7f6Vq3ZQm9Yb9u"
    instance_id = an_instance(aws_ec2, fake_instances, console=f"AIRFLOW_HPC_HOST_KEY {impostor}\n")
    transport = SsmTransport(target(instance_id))
    with pytest.raises(ClusterAuthError, match="not the one it published"):
        await transport.run("true\n")
    await transport.close()


async def test_an_instance_that_published_no_host_key_is_not_connected_to(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    instance_id = an_instance(aws_ec2, fake_instances, console="booting, no keys yet\n")
    transport = SsmTransport(target(instance_id))
    with pytest.raises(ClusterUnreachableError, match="has not published its SSH host keys"):
        await transport.run("true\n")
    assert not fake_instances.pushed or all(p["instance"] != instance_id for p in fake_instances.pushed)


async def test_the_explicit_opt_out_connects_without_a_host_key_and_says_so(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns, caplog: pytest.LogCaptureFixture
) -> None:
    instance_id = an_instance(aws_ec2, fake_instances, console="")
    transport = SsmTransport(target(instance_id, host_key_check="off"))
    try:
        assert (await transport.run("echo unverified\n")).text.strip() == "unverified"
    finally:
        await transport.close()
    assert "does NOT verify the host key" in caplog.text


async def test_a_refused_key_is_an_auth_error(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    instance_id = an_instance(aws_ec2, fake_instances)
    fake_instances.refuse_keys.add(instance_id)
    transport = SsmTransport(target(instance_id))
    with pytest.raises(ClusterAuthError, match="refused the key pushed with EC2 Instance Connect"):
        await transport.run("true\n")
    await transport.close()


async def test_a_session_the_instance_does_not_answer_shows_the_cli_error(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    instance_id = an_instance(aws_ec2, fake_instances)
    stand_ins.fail_tunnel(instance_id)
    transport = SsmTransport(target(instance_id))
    with pytest.raises(ClusterUnreachableError, match="TargetNotConnected"):
        await transport.run("true\n")
    await transport.close()


def test_missing_cli_and_plugin_are_named_with_how_to_install_them(tmp_path: object) -> None:
    with pytest.raises(SsmToolsMissingError) as raised:
        find_tools(search_path="/nonexistent")
    message = str(raised.value)
    assert "the AWS CLI ('aws')" in message and "the Session Manager plugin ('session-manager-plugin')" in message
    assert "getting-started-install" in message and "session-manager-working-with-install-plugin" in message


def test_the_hook_runs_a_script_on_its_own(
    aws_ec2: MotoAws, fake_instances: FakeInstances, stand_ins: StandIns
) -> None:
    instance_id = an_instance(aws_ec2, fake_instances)
    result = SsmTunnelHook(aws_conn_id=CONN_ID).run_script(instance_id, "echo standalone\n", os_user=SSH_USER)
    assert result.text.strip() == "standalone"
