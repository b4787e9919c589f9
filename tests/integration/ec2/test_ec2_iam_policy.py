"""The shipped EC2 template (cloudformation/ec2_ephemeral.yaml) deploys, and its policies cover every call.

moto's CloudFormation resolves the template's parameters and intrinsic functions as AWS does; the
policies are read back from IAM as deployed.
"""

from __future__ import annotations

import uuid
from typing import Any

from airflow_hpc_provider.hooks.ec2 import CONTROLLER_ACTIONS
from tests.integration.batch.moto_batch import MotoAws
from tests.integration.batch.test_batch_iam_policy import granted_actions, policies_of
from tests.integration.ec2.fake_ec2 import SSH_USER

TEMPLATE = "ec2_ephemeral.yaml"


def deploy_ec2_stack(aws: MotoAws, **parameters: str) -> dict[str, str]:
    from importlib import resources

    cloudformation = aws.client("cloudformation")
    stack = f"airflow-hpc-ec2-{uuid.uuid4().hex[:6]}"
    cloudformation.create_stack(
        StackName=stack,
        TemplateBody=resources.files("airflow_hpc_provider").joinpath("cloudformation", TEMPLATE).read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in {"OsUser": SSH_USER, **parameters}.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE"
    return {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}


def test_the_template_deploys_without_an_archive_bucket_and_grants_no_s3(moto_aws: MotoAws) -> None:
    outputs = deploy_ec2_stack(moto_aws)
    assert set(outputs) == {"InstanceProfileName", "ControllerPolicyArn"}
    policies = policies_of(outputs, moto_aws.client("iam"))
    assert granted_actions(policies["ControllerPolicyArn"]) == set(CONTROLLER_ACTIONS) - {"s3:PutObject"}
    profile = moto_aws.client("iam").get_instance_profile(InstanceProfileName=outputs["InstanceProfileName"])
    assert len(profile["InstanceProfile"]["Roles"]) == 1


def test_with_an_archive_bucket_it_adds_the_archive_policy_for_that_bucket_only(moto_aws: MotoAws) -> None:
    bucket = f"logs-{uuid.uuid4().hex[:8]}"
    outputs = deploy_ec2_stack(moto_aws, ArchiveBucket=bucket)
    policies: dict[str, Any] = policies_of(outputs, moto_aws.client("iam"))
    assert granted_actions(policies["ArchivePolicyArn"]) == {"s3:PutObject"}
    assert policies["ArchivePolicyArn"]["Statement"][0]["Resource"] == f"arn:aws:s3:::{bucket}/*"
