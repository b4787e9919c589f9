"""EC2 for the ephemeral operator, through the amazon provider's ``AwsBaseHook``: the standard ``aws``
connection decides credentials, role, region and ``endpoint_url``. Blocking boto3 calls; async code
runs them in a thread.

Every API action used here is listed in :data:`CONTROLLER_ACTIONS`, and the CloudFormation template
(``cloudformation/ec2_ephemeral.yaml``) grants exactly those; a test keeps the two in step.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from airflow_hpc_provider.dialects import ec2
from airflow_hpc_provider.errors import ConnectionConfigError, SubmissionError
from airflow_hpc_provider.hooks.aws import MultiServiceAwsHook
from airflow_hpc_provider.hooks.batch import AUTH_CODES, error_code, error_text

log = logging.getLogger(__name__)

CONTROLLER_ACTIONS = (
    "ec2:RunInstances",
    "ec2:CreateTags",
    "ec2:DescribeInstances",
    "ec2:TerminateInstances",
    "ec2:GetConsoleOutput",
    "ec2-instance-connect:SendSSHPublicKey",
    "ssm:StartSession",
    "ssm:TerminateSession",
    "iam:PassRole",
    "s3:PutObject",
)


@dataclass(frozen=True)
class Ec2Instance:
    instance_id: str
    state: str
    launched: datetime
    tags: Mapping[str, str]
    availability_zone: str | None = None
    state_reason: str | None = None  # EC2's StateReason message (why it is pending, stopped, ...)


@dataclass(frozen=True)
class LaunchRequest:
    """Everything ``RunInstances`` gets. ``client_token`` makes a repeated call launch nothing new."""

    image_id: str
    instance_type: str
    user_data: str
    tags: Mapping[str, str]
    client_token: str
    subnet_id: str | None = None
    security_group_ids: Sequence[str] = ()
    instance_profile: str | None = None

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "ImageId": self.image_id,
            "InstanceType": self.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": self.user_data,
            "ClientToken": self.client_token,
            # The safety timer's poweroff then ends the instance for good, whatever Airflow does.
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": ec2.tag_list(self.tags)},
                {"ResourceType": "volume", "Tags": ec2.tag_list(self.tags)},
            ],
            # IMDSv2 only: a container escaping to the metadata service gets nothing without a token.
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        }
        if self.subnet_id:
            params["SubnetId"] = self.subnet_id
        if self.security_group_ids:
            params["SecurityGroupIds"] = list(self.security_group_ids)
        if self.instance_profile:
            field = "Arn" if self.instance_profile.startswith("arn:") else "Name"
            params["IamInstanceProfile"] = {field: self.instance_profile}
        return params


class Ec2InstanceHook(MultiServiceAwsHook):
    """Launch, find, describe and terminate the operator's instances; read their consoles."""

    def __init__(self, aws_conn_id: str | None = "aws_default", region_name: str | None = None) -> None:
        super().__init__(aws_conn_id, region_name, client_type="ec2")

    @property
    def region(self) -> str:
        return str(self.client().meta.region_name)

    def where(self) -> str:
        return f"connection {self.aws_conn_id}, region {self.region}"

    def settings(self) -> dict[str, Any]:
        """The ``ec2`` block of the connection's extra: defaults for the operator's infrastructure."""
        value = self.conn_config.extra_config.get("ec2") or {}
        if not isinstance(value, Mapping):
            raise ConnectionConfigError(f"connection {self.aws_conn_id!r}: extra 'ec2' must be a JSON object")
        return dict(value)

    # -- launching ---------------------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> str:
        try:
            answer = self.client().run_instances(**request.parameters())
        except ClientError as error:
            raise SubmissionError(
                f"RunInstances ({request.instance_type}, {request.image_id})",
                self.where(),
                None,
                f"{error_code(error)}: {error_text(error)}",
            ) from error
        return str(answer["Instances"][0]["InstanceId"])

    # -- finding -----------------------------------------------------------------------------------

    def _instances(self, filters: list[dict[str, Any]], instance_ids: Sequence[str] = ()) -> list[Ec2Instance]:
        kwargs: dict[str, Any] = {"Filters": filters}
        if instance_ids:
            kwargs["InstanceIds"] = list(instance_ids)
        found: list[Ec2Instance] = []
        for page in self.client().get_paginator("describe_instances").paginate(**kwargs):
            for reservation in page.get("Reservations", []):
                for item in reservation.get("Instances", []):
                    launched = item.get("LaunchTime") or datetime.now(UTC)
                    if launched.tzinfo is None:
                        launched = launched.replace(tzinfo=UTC)
                    found.append(
                        Ec2Instance(
                            instance_id=str(item["InstanceId"]),
                            state=str(item["State"]["Name"]),
                            launched=launched,
                            tags=ec2.tag_dict(item.get("Tags")),
                            availability_zone=(item.get("Placement") or {}).get("AvailabilityZone"),
                            state_reason=_state_reason(item),
                        )
                    )
        return found

    def describe(self, instance_id: str) -> Ec2Instance:
        try:
            found = self._instances([], [instance_id])
        except ClientError as error:
            raise ConnectionConfigError(f"DescribeInstances {instance_id}: {error_text(error)}") from error
        if not found:
            raise ConnectionConfigError(f"instance {instance_id} does not exist ({self.where()})")
        return found[0]

    def tagged(self, prefix: str, tags: Mapping[str, str] | None = None) -> list[Ec2Instance]:
        """Live (not terminated) instances carrying this provider's tags, optionally with given values."""
        filters: list[dict[str, Any]] = [
            {"Name": "tag-key", "Values": [f"{prefix}:key"]},
            {"Name": "instance-state-name", "Values": list(ec2.LIVE_INSTANCE_STATES)},
        ]
        filters += [{"Name": f"tag:{name}", "Values": [value]} for name, value in (tags or {}).items()]
        return sorted(self._instances(filters), key=lambda i: i.launched)

    def find_live(self, prefix: str, task_digest: str) -> Ec2Instance | None:
        """An instance an earlier try of this task instance launched and that still runs."""
        for instance in self.tagged(prefix):
            owner = ec2.TaskTags.from_tags(instance.tags, prefix)
            if owner is not None and owner.key.task_digest == task_digest and instance.state in ("pending", "running"):
                return instance
        return None

    # -- ending ------------------------------------------------------------------------------------

    def terminate(self, instance_ids: Sequence[str]) -> None:
        if not instance_ids:
            return
        try:
            self.client().terminate_instances(InstanceIds=list(instance_ids))
        except ClientError as error:
            if error_code(error) == "InvalidInstanceID.NotFound":
                return  # already gone
            raise

    # -- console and keys ----------------------------------------------------------------------------

    def console_output(self, instance_id: str) -> str:
        # Latest=True: the live console on Nitro instances, not the snapshot taken at boot.
        answer = self.client().get_console_output(InstanceId=instance_id, Latest=True)
        text = answer.get("Output") or ""
        try:  # the API sends base64; tolerate an endpoint that sends plain text
            return base64.b64decode(text, validate=True).decode(errors="replace")
        except ValueError:
            return str(text)

    def send_ssh_public_key(
        self, instance_id: str, os_user: str, public_key: str, availability_zone: str | None = None
    ) -> None:
        """Push a public key that sshd on the instance accepts for 60 seconds (EC2 Instance Connect)."""
        kwargs: dict[str, Any] = {"InstanceId": instance_id, "InstanceOSUser": os_user, "SSHPublicKey": public_key}
        if availability_zone:
            kwargs["AvailabilityZone"] = availability_zone
        answer = self.client("ec2-instance-connect").send_ssh_public_key(**kwargs)
        if not answer.get("Success", False):
            raise ConnectionConfigError(f"SendSSHPublicKey to {instance_id} did not succeed: {answer}")

    # -- archive -----------------------------------------------------------------------------------

    def put_archive(self, uri: str, data: bytes) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        self.client("s3").put_object(Bucket=bucket, Key=key, Body=data, ContentType="text/plain")


def _state_reason(item: Mapping[str, Any]) -> str | None:
    reason = item.get("StateReason") or {}
    text = str(reason.get("Message") or reason.get("Code") or item.get("StateTransitionReason") or "").strip()
    return text or None


def is_auth_error(error: ClientError) -> bool:
    return error_code(error) in AUTH_CODES
