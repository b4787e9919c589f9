"""Where jobs and task instances run: subnets (given, or the region's default VPC) and a security group of
the set-up's own with no inbound rule (jobs reach out; nothing reaches in)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from airflow_hpc_provider.errors import SetupError
from airflow_hpc_provider.setup.prompts import Prompter
from airflow_hpc_provider.setup.resources import Found, Resource, aws_step, error_code, tag_list, tag_value, wait_for


@dataclass(frozen=True)
class Network:
    vpc_id: str
    subnet_ids: tuple[str, ...]


def resolve_network(ec2: Any, subnet_ids: Sequence[str], prompter: Prompter) -> Network:
    """The subnets asked for (all in one VPC), else the default VPC's default subnets, else ask."""
    with aws_step("reading subnets"):
        if not subnet_ids:
            subnet_ids = _default_subnets(ec2)
        if not subnet_ids:
            answer = prompter.ask(
                "Subnet ids for the jobs, comma-separated (they need a route to the internet or VPC endpoints)",
                flag="--subnet-ids",
                why="this region has no default VPC to put them in",
            )
            subnet_ids = [s.strip() for s in answer.split(",") if s.strip()]
        try:
            subnets = ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
        except ClientError as error:
            if error_code(error).startswith("InvalidSubnet"):
                raise SetupError(f"--subnet-ids {','.join(subnet_ids)}: {error}") from error
            raise
    vpcs = {subnet["VpcId"] for subnet in subnets}
    if len(vpcs) != 1:
        raise SetupError(f"--subnet-ids: the subnets must be in one VPC; they are in {', '.join(sorted(vpcs))}")
    return Network(vpc_id=vpcs.pop(), subnet_ids=tuple(subnet_ids))


def _default_subnets(ec2: Any) -> list[str]:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        return []
    subnets = ec2.describe_subnets(
        Filters=[
            {"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]},
            {"Name": "default-for-az", "Values": ["true"]},
        ]
    )["Subnets"]
    return sorted(subnet["SubnetId"] for subnet in subnets)


class SecurityGroup(Resource):
    """A security group without inbound rules (EC2's default outbound rule lets jobs reach out)."""

    kind = "EC2 security group"

    def __init__(self, ec2: Any, name: str, setup_name: str, *, description: str) -> None:
        super().__init__(name, setup_name)
        self.ec2 = ec2
        self.description = description
        self.network: Network | None = None  # set before create (provision); not needed to find or delete
        self.group_id = ""
        self.ours: list[str] = []  # every group of this name with our tag (one per VPC it was made in)

    def find(self) -> Found | None:
        filters = [{"Name": "group-name", "Values": [self.name]}]
        if self.network:  # provision: only the subnets' VPC counts
            filters.append({"Name": "vpc-id", "Values": [self.network.vpc_id]})
        with aws_step(f"reading {self.kind} {self.name}"):
            groups = self.ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
        if not groups:
            return None
        # The same name may exist in several VPCs: ours are those with our tag.
        ours = [g for g in groups if tag_value(g.get("Tags")) == self.setup_name]
        self.ours = [g["GroupId"] for g in ours]
        group = (ours or groups)[0]
        self.group_id = group["GroupId"]
        return Found(owner=tag_value(group.get("Tags")), detail=f"{self.group_id} in {group['VpcId']}")

    def create(self) -> str:
        assert self.network is not None, "the network is resolved before anything is created"
        with aws_step(f"creating {self.kind} {self.name}"):
            self.group_id = self.ec2.create_security_group(
                GroupName=self.name,
                Description=self.description,
                VpcId=self.network.vpc_id,
                TagSpecifications=[{"ResourceType": "security-group", "Tags": tag_list(self.tags)}],
            )["GroupId"]
        return f"{self.group_id} in {self.network.vpc_id}"

    def delete(self, found: Found) -> list[str]:
        def deleted(group_id: str) -> bool:
            try:
                self.ec2.delete_security_group(GroupId=group_id)
            except ClientError as error:
                # Network interfaces of instances still shutting down hold it for a while.
                if error_code(error) == "DependencyViolation":
                    return False
                raise
            return True

        with aws_step(f"deleting {self.kind} {self.name}"):
            for group_id in self.ours:
                what = f"deleting {self.kind} {self.name} ({group_id} still in use)"
                wait_for(what, functools.partial(deleted, group_id), timeout_s=600)
        return [f"also {', '.join(self.ours[1:])} (same name, other VPCs)"] if len(self.ours) > 1 else []
