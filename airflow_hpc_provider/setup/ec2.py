"""The EC2 set-up for ``Ec2EphemeralOperator``: a security group without inbound rules (unless
``--security-group-ids`` names one) and the shipped stack ``cloudformation/ec2_ephemeral.yaml``
(the task instances' role and instance profile, the controller policy, the archive policy)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from airflow_hpc_provider.errors import SetupError
from airflow_hpc_provider.setup.access import AwsAccess
from airflow_hpc_provider.setup.naming import SetupNames
from airflow_hpc_provider.setup.network import Network, SecurityGroup
from airflow_hpc_provider.setup.resources import Resource
from airflow_hpc_provider.setup.stacks import Stack

STACK_TEMPLATE = "ec2_ephemeral.yaml"
ARCHIVE_PREFIX = "airflow-hpc/ec2"
POLICY_OUTPUTS = ("ControllerPolicyArn", "ArchivePolicyArn")
_AMI = re.compile(r"ami-[0-9a-f]{8,17}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class Ec2Options:
    os_user: str = "ec2-user"
    archive_bucket: str = ""
    ami_id: str = ""
    instance_type: str = "t3.small"
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.ami_id and not _AMI.fullmatch(self.ami_id):
            raise SetupError(f"--ami-id {self.ami_id!r} is not an AMI id (ami-0123456789abcdef0)")
        if self.archive_bucket and not _BUCKET.fullmatch(self.archive_bucket):
            raise SetupError(f"--archive-bucket {self.archive_bucket!r} is not an S3 bucket name")
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", self.os_user):
            raise SetupError(f"--os-user {self.os_user!r} is not a Linux user name")


@dataclass
class Ec2Setup:
    names: SetupNames
    access: AwsAccess
    options: Ec2Options = field(default_factory=Ec2Options)

    def __post_init__(self) -> None:
        setup = self.names.name
        self.network: Network | None = None
        self.security_group = SecurityGroup(
            self.access.client("ec2"),
            self.names.ec2_security_group,
            setup,
            description=f"airflow-hpc set-up {setup}: EC2 task instances, reached through SSM only (no inbound rules)",
        )
        self.stack = Stack(
            self.access.client("cloudformation"),
            self.access.client("iam"),
            self.names.ec2_stack,
            setup,
            template_file=STACK_TEMPLATE,
            parameters=lambda: {"ArchiveBucket": self.options.archive_bucket, "OsUser": self.options.os_user},
        )

    def every_resource(self) -> list[Resource]:
        return [self.security_group, self.stack]

    def needed(self) -> list[Resource]:
        return [self.stack] if self.options.security_group_ids else self.every_resource()

    def prepare(self, network: Network) -> None:
        self.network = network
        self.security_group.network = network

    def policies_to_attach(self) -> list[str]:
        return [self.stack.outputs[key] for key in POLICY_OUTPUTS if key in self.stack.outputs]

    def connection_extra(self) -> dict[str, Any]:
        ec2: dict[str, Any] = {}
        if self.options.ami_id:
            ec2["ami_id"] = self.options.ami_id
        if self.network:
            ec2["subnet_id"] = self.network.subnet_ids[0]
        groups = self.options.security_group_ids or (
            (self.security_group.group_id,) if self.security_group.group_id else ()
        )
        if groups:
            ec2["security_group_ids"] = list(groups)
        if "InstanceProfileName" in self.stack.outputs:
            ec2["instance_profile"] = self.stack.outputs["InstanceProfileName"]
        ec2["instance_types"] = {"default": self.options.instance_type}
        ec2["os_user"] = self.options.os_user
        if self.options.archive_bucket:
            ec2["archive_s3_prefix"] = f"s3://{self.options.archive_bucket}/{ARCHIVE_PREFIX}"
        return {"ec2": ec2}

    def operator_arguments(self, conn_id: str) -> dict[str, Any]:
        return {"aws_conn_id": conn_id, "image": "public.ecr.aws/docker/library/bash:5.2"}

    def notes(self) -> list[str]:
        found: list[str] = []
        if not self.options.ami_id:
            found.append(
                'add "ami_id" to the "ec2" extra: an AMI with Docker, the SSM agent and ec2-instance-connect '
                "(e.g. Amazon Linux 2023 with Docker installed), or give --ami-id"
            )
        found.append(
            "the subnet needs a route to the SSM endpoints (ssm, ssmmessages, ec2messages) and the image registry: "
            "an internet gateway, a NAT gateway or VPC endpoints"
        )
        found.append(
            "the Airflow hosts need the AWS CLI v2 and the Session Manager plugin (docs: operators/ec2_ephemeral)"
        )
        return found
