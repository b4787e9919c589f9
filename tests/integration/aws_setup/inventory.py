"""Everything that exists in moto in the services the AWS set-up touches, read with plain boto3.

The set-up's tests compare two of these (before and after a command) instead of believing what the
command says about itself: a second ``provision`` must leave every detail (ids, creation times,
revisions, tags, documents) as it was, and ``cleanup`` must bring back exactly the inventory from
before ``provision``. Batch keeps deregistered job definitions as INACTIVE forever (AWS does the
same; nothing deletes them), so only ACTIVE ones count.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from tests.integration.batch.moto_batch import MotoAws


def _or_none(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except ClientError as error:
        return f"<{error.response['Error']['Code']}>"


def iam_inventory(aws: MotoAws) -> dict[str, Any]:
    iam = aws.client("iam")
    roles = {}
    for page in iam.get_paginator("list_roles").paginate():
        for role in page["Roles"]:
            name = role["RoleName"]
            roles[name] = {
                "arn": role["Arn"],
                "created": role["CreateDate"].isoformat(),
                "trust": role["AssumeRolePolicyDocument"],
                "attached": sorted(
                    p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
                ),
                "inline": sorted(iam.list_role_policies(RoleName=name)["PolicyNames"]),
                "tags": iam.list_role_tags(RoleName=name)["Tags"],
            }
    profiles = {}
    for page in iam.get_paginator("list_instance_profiles").paginate():
        for profile in page["InstanceProfiles"]:
            profiles[profile["InstanceProfileName"]] = {
                "arn": profile["Arn"],
                "created": profile["CreateDate"].isoformat(),
                "roles": sorted(r["RoleName"] for r in profile["Roles"]),
            }
    policies = {}
    for page in iam.get_paginator("list_policies").paginate(Scope="Local"):
        for policy in page["Policies"]:
            version = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])
            policies[policy["Arn"]] = {
                "version": policy["DefaultVersionId"],
                "document": version["PolicyVersion"]["Document"],
                "attachments": policy.get("AttachmentCount"),
            }
    return {"roles": roles, "instance_profiles": profiles, "policies": policies}


def s3_inventory(aws: MotoAws) -> dict[str, Any]:
    s3 = aws.client("s3")
    buckets = {}
    for bucket in s3.list_buckets()["Buckets"]:
        name = bucket["Name"]
        objects = s3.list_object_versions(Bucket=name)
        buckets[name] = {
            "created": bucket["CreationDate"].isoformat(),
            "tags": _or_none(lambda n=name: s3.get_bucket_tagging(Bucket=n)["TagSet"]),
            "encryption": _or_none(
                lambda n=name: s3.get_bucket_encryption(Bucket=n)["ServerSideEncryptionConfiguration"]
            ),
            "lifecycle": _or_none(lambda n=name: s3.get_bucket_lifecycle_configuration(Bucket=n)["Rules"]),
            "public_access": _or_none(
                lambda n=name: s3.get_public_access_block(Bucket=n)["PublicAccessBlockConfiguration"]
            ),
            "objects": sorted((v["Key"], v["VersionId"]) for v in objects.get("Versions", [])),
        }
    return buckets


def batch_inventory(aws: MotoAws) -> dict[str, Any]:
    batch = aws.client("batch")
    environments = {
        env["computeEnvironmentName"]: {
            key: env.get(key)
            for key in ("computeEnvironmentArn", "status", "state", "computeResources", "serviceRole", "tags")
        }
        for env in batch.describe_compute_environments()["computeEnvironments"]
    }
    queues = {
        queue["jobQueueName"]: {
            key: queue.get(key)
            for key in ("jobQueueArn", "status", "state", "priority", "computeEnvironmentOrder", "tags")
        }
        for queue in batch.describe_job_queues()["jobQueues"]
    }
    definitions = {
        f"{d['jobDefinitionName']}:{d['revision']}": {
            "container": d.get("containerProperties"),
            "platform": d.get("platformCapabilities"),
            "tags": d.get("tags"),
        }
        for page in batch.get_paginator("describe_job_definitions").paginate(status="ACTIVE")
        for d in page["jobDefinitions"]
        if d["status"] == "ACTIVE"
    }
    return {"compute_environments": environments, "job_queues": queues, "active_job_definitions": definitions}


def cloudformation_inventory(aws: MotoAws) -> dict[str, Any]:
    cloudformation = aws.client("cloudformation")
    stacks = {}
    for stack in cloudformation.describe_stacks()["Stacks"]:
        if stack["StackStatus"] == "DELETE_COMPLETE":
            continue
        stacks[stack["StackName"]] = {
            "id": stack["StackId"],
            "status": stack["StackStatus"],
            "updated": str(stack.get("LastUpdatedTime")),
            "parameters": stack.get("Parameters"),
            "outputs": stack.get("Outputs"),
            "tags": stack.get("Tags"),
            "resources": sorted(
                (r["LogicalResourceId"], r["PhysicalResourceId"])
                for r in cloudformation.list_stack_resources(StackName=stack["StackName"])["StackResourceSummaries"]
            ),
        }
    return stacks


def ec2_inventory(aws: MotoAws) -> dict[str, Any]:
    ec2 = aws.client("ec2")
    groups = {
        group["GroupId"]: {
            "name": group["GroupName"],
            "vpc": group.get("VpcId"),
            "inbound": group["IpPermissions"],
            "outbound": group["IpPermissionsEgress"],
            "tags": group.get("Tags"),
        }
        for group in ec2.describe_security_groups()["SecurityGroups"]
    }
    instances = sorted(
        (instance["InstanceId"], instance["State"]["Name"])
        for reservation in ec2.describe_instances()["Reservations"]
        for instance in reservation["Instances"]
        if instance["State"]["Name"] != "terminated"
    )
    return {
        "security_groups": groups,
        "instances": instances,
        "vpcs": sorted(v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]),
        "subnets": sorted(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]),
    }


def inventory(aws: MotoAws) -> dict[str, Any]:
    """Every resource of every service the set-up calls (IAM, S3, Batch, CloudFormation, EC2, KMS)."""
    return {
        "iam": iam_inventory(aws),
        "s3": s3_inventory(aws),
        "batch": batch_inventory(aws),
        "cloudformation": cloudformation_inventory(aws),
        "ec2": ec2_inventory(aws),
        "kms": sorted(k["KeyId"] for k in aws.client("kms").list_keys()["Keys"]),
    }


def differences(before: dict[str, Any], after: dict[str, Any], path: str = "") -> list[str]:
    """Readable differences between two inventories (empty when equal)."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            if key not in after:
                found.append(f"gone: {path}/{key}")
            elif key not in before:
                found.append(f"new: {path}/{key}")
            else:
                found += differences(before[key], after[key], f"{path}/{key}")
        return found
    return [] if before == after else [f"changed: {path}: {before!r} -> {after!r}"]
