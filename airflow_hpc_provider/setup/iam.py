"""IAM for the set-up: roles that AWS services assume, an instance profile, and one policy attachment."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from airflow_hpc_provider.setup.resources import Found, Resource, aws_step, tag_list, tag_value


def trust_policy(service: str) -> dict[str, Any]:
    """Who may assume the role: one AWS service principal."""
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }


def aws_managed_policy(partition: str, path_and_name: str) -> str:
    return f"arn:{partition}:iam::aws:policy/{path_and_name}"


class ServiceRole(Resource):
    """A role an AWS service assumes (``service``), with AWS-managed policies attached.

    Policies someone attached later (e.g. data access for the jobs' role) are kept on converge;
    on delete every policy is detached, as IAM requires before a role can go.
    """

    kind = "IAM role"

    def __init__(
        self,
        iam: Any,
        name: str,
        setup_name: str,
        *,
        service: str,
        description: str,
        managed_policies: Sequence[str] = (),
    ) -> None:
        super().__init__(name, setup_name)
        self.iam = iam
        self.service = service
        self.description = description
        self.managed_policies = tuple(managed_policies)
        self.arn = ""
        self.owner: str | None = None  # its set-up tag, once found

    def find(self) -> Found | None:
        with aws_step(f"reading {self.kind} {self.name}"):
            try:
                role = self.iam.get_role(RoleName=self.name)["Role"]
            except self.iam.exceptions.NoSuchEntityException:
                return None
            tags = self.iam.list_role_tags(RoleName=self.name)["Tags"]
        self.arn = role["Arn"]
        self.owner = tag_value(tags)
        return Found(owner=self.owner, detail=self.arn)

    def create(self) -> str:
        with aws_step(f"creating {self.kind} {self.name}"):
            role = self.iam.create_role(
                RoleName=self.name,
                AssumeRolePolicyDocument=json.dumps(trust_policy(self.service)),
                Description=self.description,
                Tags=tag_list(self.tags),
            )["Role"]
            self.arn = role["Arn"]
            self.owner = self.setup_name
            for policy in self.managed_policies:
                self.iam.attach_role_policy(RoleName=self.name, PolicyArn=policy)
        return self.arn

    def converge(self, found: Found) -> list[str]:
        changes: list[str] = []
        with aws_step(f"checking {self.kind} {self.name}"):
            role = self.iam.get_role(RoleName=self.name)["Role"]
            trust = role["AssumeRolePolicyDocument"]
            if isinstance(trust, str):
                trust = json.loads(trust)
            if trust != trust_policy(self.service):
                self.iam.update_assume_role_policy(
                    RoleName=self.name, PolicyDocument=json.dumps(trust_policy(self.service))
                )
                changes.append(f"trust policy reset to {self.service}")
            attached = {p["PolicyArn"] for p in self._attached()}
            for policy in self.managed_policies:
                if policy not in attached:
                    self.iam.attach_role_policy(RoleName=self.name, PolicyArn=policy)
                    changes.append(f"attached {policy}")
        return changes

    def _attached(self) -> list[dict[str, Any]]:
        pages = self.iam.get_paginator("list_attached_role_policies").paginate(RoleName=self.name)
        return [policy for page in pages for policy in page["AttachedPolicies"]]

    def delete(self, found: Found) -> list[str]:
        notes: list[str] = []
        with aws_step(f"deleting {self.kind} {self.name}"):
            for profile in self.iam.list_instance_profiles_for_role(RoleName=self.name)["InstanceProfiles"]:
                self.iam.remove_role_from_instance_profile(
                    InstanceProfileName=profile["InstanceProfileName"], RoleName=self.name
                )
                notes.append(f"removed from instance profile {profile['InstanceProfileName']}")
            for policy in self._attached():
                self.iam.detach_role_policy(RoleName=self.name, PolicyArn=policy["PolicyArn"])
                if policy["PolicyArn"] not in self.managed_policies:
                    notes.append(f"detached {policy['PolicyArn']}")
            for name in self.iam.list_role_policies(RoleName=self.name)["PolicyNames"]:
                self.iam.delete_role_policy(RoleName=self.name, PolicyName=name)
                notes.append(f"deleted inline policy {name}")
            self.iam.delete_role(RoleName=self.name)
        return notes


class InstanceProfile(Resource):
    """The instance profile of a role (same name), which EC2 instances take the role through."""

    kind = "IAM instance profile"

    def __init__(self, iam: Any, role: ServiceRole) -> None:
        super().__init__(role.name, role.setup_name)
        self.iam = iam
        self.role = role
        self.arn = ""

    def find(self) -> Found | None:
        with aws_step(f"reading {self.kind} {self.name}"):
            try:
                profile = self.iam.get_instance_profile(InstanceProfileName=self.name)["InstanceProfile"]
            except self.iam.exceptions.NoSuchEntityException:
                return None
        self.arn = profile["Arn"]
        return Found(owner=tag_value(profile.get("Tags")), detail=self.arn)

    def create(self) -> str:
        with aws_step(f"creating {self.kind} {self.name}"):
            profile = self.iam.create_instance_profile(InstanceProfileName=self.name, Tags=tag_list(self.tags))
            self.arn = profile["InstanceProfile"]["Arn"]
            self.iam.add_role_to_instance_profile(InstanceProfileName=self.name, RoleName=self.role.name)
        return self.arn

    def converge(self, found: Found) -> list[str]:
        with aws_step(f"checking {self.kind} {self.name}"):
            profile = self.iam.get_instance_profile(InstanceProfileName=self.name)["InstanceProfile"]
            if any(role["RoleName"] == self.role.name for role in profile["Roles"]):
                return []
            self.iam.add_role_to_instance_profile(InstanceProfileName=self.name, RoleName=self.role.name)
        return [f"role {self.role.name} added"]

    def delete(self, found: Found) -> list[str]:
        with aws_step(f"deleting {self.kind} {self.name}"):
            try:
                profile = self.iam.get_instance_profile(InstanceProfileName=self.name)["InstanceProfile"]
            except self.iam.exceptions.NoSuchEntityException:
                return []
            for role in profile["Roles"]:
                self.iam.remove_role_from_instance_profile(InstanceProfileName=self.name, RoleName=role["RoleName"])
            self.iam.delete_instance_profile(InstanceProfileName=self.name)
        return []


class PolicyAttachment(Resource):
    """A managed policy made by this set-up (``policy_arn()``, e.g. a stack output) attached to one of its roles.

    Whose it is follows the role (a policy of ours on a role that is not ours is left to the policy's own
    deletion check); deleting it detaches only this policy from this role.
    """

    kind = "IAM policy attachment"

    def __init__(self, iam: Any, role: ServiceRole, what: str, policy_arn: Callable[[], str | None]) -> None:
        super().__init__(f"{what} -> {role.name}", role.setup_name)
        self.iam = iam
        self.role = role
        self.policy_arn = policy_arn

    def find(self) -> Found | None:
        arn = self.policy_arn()
        if not arn:
            return None
        with aws_step(f"reading the policies of {self.role.name}"):
            try:
                pages = self.iam.get_paginator("list_attached_role_policies").paginate(RoleName=self.role.name)
                attached = {policy["PolicyArn"] for page in pages for policy in page["AttachedPolicies"]}
            except self.iam.exceptions.NoSuchEntityException:
                return None
        # The attachment carries no tag of its own; the policy comes from our own stack.
        return Found(owner=self.role.owner, detail=arn) if arn in attached else None

    def create(self) -> str:
        arn = self.policy_arn()
        with aws_step(f"attaching {arn} to {self.role.name}"):
            self.iam.attach_role_policy(RoleName=self.role.name, PolicyArn=arn)
        return str(arn)

    def delete(self, found: Found) -> list[str]:
        detaching = aws_step(f"detaching {found.detail} from {self.role.name}")
        with detaching, contextlib.suppress(self.iam.exceptions.NoSuchEntityException):
            self.iam.detach_role_policy(RoleName=self.role.name, PolicyArn=found.detail)
        return []
