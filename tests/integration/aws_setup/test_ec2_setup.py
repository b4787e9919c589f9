"""``hpc-aws-setup ec2``: the shipped stack and a security group, judged by moto's own inventory."""

from __future__ import annotations

from typing import Any

from tests.integration.aws_setup.conftest import CONN_ID, SECRET, Ran, ec2
from tests.integration.aws_setup.inventory import differences, inventory
from tests.integration.batch.moto_batch import MotoAws


def succeeded(ran: Ran) -> Ran:
    assert ran.code == 0, f"exit {ran.code}\nstdout:\n{ran.out}\nstderr:\n{ran.err}"
    assert SECRET not in ran.out and SECRET not in ran.err
    return ran


def test_ec2_provision_twice_prints_a_complete_connection_and_cleanup_brings_back_the_inventory(
    aws: MotoAws, name: str
) -> None:
    flags = ("--name", name, "--aws-conn-id", CONN_ID, "--non-interactive", "--json")
    choices = ("--ami-id", "ami-0123456789abcdef0", "--archive-bucket", f"{name}-archive")
    before = inventory(aws)
    try:
        first = succeeded(ec2("provision", *flags, *choices))
        provisioned = inventory(aws)
        new = differences(before, provisioned)
        assert f"new: /cloudformation/{name}-ec2" in new
        # The stack's role, profile and two policies (controller, archive), one security group: nothing else.
        assert len([line for line in new if line.startswith("new: /iam/policies/")]) == 2
        assert len([line for line in new if line.startswith("new: /ec2/security_groups/")]) == 1
        assert len(new) == 6, new

        second = succeeded(ec2("provision", *flags, *choices))
        assert differences(provisioned, inventory(aws)) == []
        assert {r["state"] for r in second.document["resources"]} == {"unchanged"}  # type: ignore[attr-defined]

        document: dict[str, Any] = succeeded(ec2("show", *flags, "--ami-id", "ami-0123456789abcdef0")).document
        extra = document["connection"]["extra"]["ec2"]
        assert extra == first.document["connection"]["extra"]["ec2"]  # type: ignore[index]
        (group,) = [g for g, v in provisioned["ec2"]["security_groups"].items() if v["name"] == f"{name}-ec2-tasks"]
        assert provisioned["ec2"]["security_groups"][group]["inbound"] == []
        assert extra["security_group_ids"] == [group] and extra["ami_id"] == "ami-0123456789abcdef0"
        assert extra["archive_s3_prefix"] == f"s3://{name}-archive/airflow-hpc/ec2"
        assert extra["instance_profile"] in str(provisioned["iam"]["instance_profiles"])
        assert [arn.split("/")[-1].split("-")[-2] for arn in document["attach_policies"]] == [
            "ControllerPolicy",
            "ArchivePolicy",
        ]
    finally:
        succeeded(ec2("cleanup", "--name", name, "--aws-conn-id", CONN_ID, "--non-interactive", "--detach-policies"))
    assert differences(before, inventory(aws)) == []
