"""A CloudFormation stack of one of the templates the provider ships (``airflow_hpc_provider/cloudformation``).

The set-up deploys the shipped templates as they are, so the policies it makes are the ones the
tests check against every call the operators make. Every parameter is passed explicitly, and the
stack carries a digest of what it was deployed from (template and parameters) in a tag: a stack is
unchanged exactly when that digest is the one asked for. (DescribeStacks is no help there: moto
answers a list parameter as a Python list's repr, AWS as the comma-joined text. Changes made to the
stack by hand, outside this command, are not seen.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from botocore.exceptions import ClientError

from airflow_hpc_provider.errors import SetupError
from airflow_hpc_provider.setup.iam import ServiceRole
from airflow_hpc_provider.setup.resources import Found, Resource, aws_step, error_code, tag_list, tag_value, wait_for

STACK_TIMEOUT_S = 900
INPUTS_TAG_KEY = "airflow-hpc:setup-inputs"


def shipped_template(file_name: str) -> str:
    return resources.files("airflow_hpc_provider").joinpath("cloudformation", file_name).read_text()


class Stack(Resource):
    kind = "CloudFormation stack"

    def __init__(
        self,
        cloudformation: Any,
        iam: Any,
        name: str,
        setup_name: str,
        *,
        template_file: str,
        parameters: Callable[[], dict[str, str]],
        own_roles: Sequence[ServiceRole] = (),
    ) -> None:
        super().__init__(name, setup_name)
        self.cloudformation = cloudformation
        self.iam = iam
        self.template_file = template_file
        self.parameters = parameters  # called when needed: they name resources made before the stack
        self.own_roles = own_roles  # roles of this set-up that its policies may be attached to
        self.outputs: dict[str, str] = {}
        self.parameters_found: dict[str, str] = {}  # the parameters of the stack as found
        self.inputs_found: str | None = None  # the digest tag of the stack as found
        self.detach_policies = False  # cleanup --detach-policies

    def _describe(self) -> dict[str, Any] | None:
        try:
            stacks = self.cloudformation.describe_stacks(StackName=self.name)["Stacks"]
        except ClientError as error:
            if error_code(error) == "ValidationError" and "does not exist" in str(error):
                return None
            raise
        live = [stack for stack in stacks if stack["StackStatus"] != "DELETE_COMPLETE"]
        return live[0] if live else None

    def find(self) -> Found | None:
        with aws_step(f"reading {self.kind} {self.name}"):
            stack = self._describe()
        if stack is None:
            return None
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        self.parameters_found = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
        self.inputs_found = next((t["Value"] for t in stack.get("Tags", []) if t["Key"] == INPUTS_TAG_KEY), None)
        return Found(owner=tag_value(stack.get("Tags")), detail=stack["StackStatus"])

    def create(self) -> str:
        with aws_step(f"creating {self.kind} {self.name}"):
            self.cloudformation.create_stack(
                StackName=self.name,
                TemplateBody=shipped_template(self.template_file),
                Parameters=self._parameter_list(),
                Capabilities=["CAPABILITY_IAM"],
                Tags=self._stack_tags(),
            )
            self._wait("CREATE_COMPLETE", "creating")
        return f"CREATE_COMPLETE ({self.template_file})"

    def _inputs_digest(self) -> str:
        inputs = json.dumps([shipped_template(self.template_file), sorted(self.parameters().items())])
        return hashlib.sha256(inputs.encode()).hexdigest()[:32]

    def _stack_tags(self) -> list[dict[str, str]]:
        return tag_list({**self.tags, INPUTS_TAG_KEY: self._inputs_digest()})

    def _parameter_list(self) -> list[dict[str, str]]:
        return [{"ParameterKey": key, "ParameterValue": value} for key, value in self.parameters().items()]

    def converge(self, found: Found) -> list[str]:
        with aws_step(f"checking {self.kind} {self.name}"):
            if found.detail == "ROLLBACK_COMPLETE":  # a creation that failed earlier: only deletion is left
                self._delete_and_wait()
                self.create()
                return ["created again (its first creation had failed)"]
            if self.inputs_found == self._inputs_digest():
                return []
            self.cloudformation.update_stack(
                StackName=self.name,
                TemplateBody=shipped_template(self.template_file),
                Parameters=self._parameter_list(),
                Capabilities=["CAPABILITY_IAM"],
                Tags=self._stack_tags(),
            )
            self._wait("UPDATE_COMPLETE", "updating")
        return ["deployed again: its template or parameters changed"]

    def _wait(self, goal: str, doing: str) -> None:
        def settled() -> bool:
            stack = self._describe()
            status = stack["StackStatus"] if stack else "DELETE_COMPLETE"
            if status == goal:
                self.outputs = {o["OutputKey"]: o["OutputValue"] for o in (stack or {}).get("Outputs", [])}
                return True
            if status.endswith("_IN_PROGRESS"):
                return False
            raise SetupError(f"{doing} {self.kind} {self.name} ended {status}: {self._failure_reasons()}")

        wait_for(f"{doing} {self.kind} {self.name}", settled, timeout_s=STACK_TIMEOUT_S, interval_s=3)

    def _failure_reasons(self) -> str:
        events = self.cloudformation.describe_stack_events(StackName=self.name)["StackEvents"]
        reasons = [
            f"{e['LogicalResourceId']}: {e['ResourceStatusReason']}"
            for e in events
            if e.get("ResourceStatus", "").endswith("_FAILED") and e.get("ResourceStatusReason")
        ]
        return "; ".join(reasons[:5]) or "no reason given"

    def _policy_arns(self) -> list[str]:
        return [arn for arn in self.outputs.values() if ":policy/" in arn]

    def _foreign_attachments(self) -> list[tuple[str, str, str]]:
        """(policy, entity kind, entity name) for each attachment of our policies outside our own roles."""
        ours = {role.name for role in self.own_roles if role.owner == self.setup_name}
        found: list[tuple[str, str, str]] = []
        for arn in self._policy_arns():
            entities = self.iam.list_entities_for_policy(PolicyArn=arn)
            found += [(arn, "role", r["RoleName"]) for r in entities["PolicyRoles"] if r["RoleName"] not in ours]
            found += [(arn, "user", u["UserName"]) for u in entities["PolicyUsers"]]
            found += [(arn, "group", g["GroupName"]) for g in entities["PolicyGroups"]]
        return found

    def deletion_blockers(self, found: Found) -> list[str]:
        with aws_step(f"reading where the policies of {self.name} are attached"):
            foreign = self._foreign_attachments()
        if not foreign or self.detach_policies:
            return []
        listed = ", ".join(f"{policy.rsplit('/', 1)[-1]} on {kind} {name}" for policy, kind, name in foreign)
        return [
            f"{self.kind} {self.name}: its policies are attached outside this set-up ({listed}); IAM deletes no "
            "policy while it is attached: detach them, or run cleanup with --detach-policies"
        ]

    def delete(self, found: Found) -> list[str]:
        notes: list[str] = []
        with aws_step(f"deleting {self.kind} {self.name}"):
            if self.detach_policies:
                for policy, kind, name in self._foreign_attachments():
                    if kind == "role":
                        self.iam.detach_role_policy(RoleName=name, PolicyArn=policy)
                    elif kind == "user":
                        self.iam.detach_user_policy(UserName=name, PolicyArn=policy)
                    else:
                        self.iam.detach_group_policy(GroupName=name, PolicyArn=policy)
                    notes.append(f"detached {policy.rsplit('/', 1)[-1]} from {kind} {name}")
            self._delete_and_wait()
        return notes

    def _delete_and_wait(self) -> None:
        self.cloudformation.delete_stack(StackName=self.name)

        def gone() -> bool:
            stack = self._describe()
            if stack is None:
                return True
            if stack["StackStatus"] == "DELETE_FAILED":
                raise SetupError(f"deleting {self.kind} {self.name} failed: {self._failure_reasons()}")
            return False

        wait_for(f"deleting {self.kind} {self.name}", gone, timeout_s=STACK_TIMEOUT_S, interval_s=3)
