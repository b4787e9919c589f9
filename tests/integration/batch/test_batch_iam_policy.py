"""The shipped IAM policies (cloudformation/batch_revision.yaml) cover every call the Batch code makes.

The template is deployed in moto's CloudFormation (which resolves its parameters and intrinsic
functions as AWS does) and the managed policies of each mode (``POLICY_OUTPUTS_OF_MODE``: the mode's
own, the pass-roles and the script-upload ones, exactly what the AWS set-up command tells users to
attach) are read back. Then each mode runs for real
against moto: a task whose script is too large for SubmitJob (S3 upload to an SSE-KMS bucket), whose
job streams lines and ends; a task stopped by a user while its job runs. Every AWS call the provider
makes on the way is recorded (botocore, in this process) with the resources it touches, plus what
AWS checks besides the call itself (``iam:PassRole`` for the roles a registered definition carries,
``batch:TagResource`` for tags given at creation, ``kms:GenerateDataKey`` for an SSE-KMS upload),
and each must be allowed by an Allow statement of that mode's policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred
from botocore.client import BaseClient

import airflow_hpc_provider
from airflow_hpc_provider.hooks.batch import ACTIONS_BY_MODE, ACTIONS_SCRIPT_UPLOAD
from airflow_hpc_provider.operators.batch import BatchRevisionOperator
from airflow_hpc_provider.setup.batch import POLICY_OUTPUTS_OF_MODE
from airflow_hpc_provider.triggers.batch import BatchJobTrigger
from airflow_hpc_provider.watching.batch_logs import MemoryPositionStore
from tests.integration.batch.conftest import CONN_ID
from tests.integration.batch.moto_batch import ACCOUNT, REGION, HeldJobs, MotoAws
from tests.integration.batch.test_batch_definitions import FakeTI

TEMPLATE = Path(airflow_hpc_provider.__file__).parent / "cloudformation" / "batch_revision.yaml"
PROVIDER = str(Path(airflow_hpc_provider.__file__).parent)
# AWS needs no permission for this one (it cannot be denied).
NO_PERMISSION = frozenset({"sts:GetCallerIdentity"})
# Operation names whose IAM action is spelled differently.
ACTION_OF_OPERATION = {"s3:GetBucketEncryption": "s3:GetEncryptionConfiguration"}


@dataclass(frozen=True)
class Need:
    """One permission AWS checks: an action on a resource."""

    action: str
    resource: str


def batch_arn(kind: str, name: str) -> str:
    return name if name.startswith("arn:") else f"arn:aws:batch:{REGION}:{ACCOUNT}:{kind}/{name}"


def needs_of(service: str, operation: str, params: dict[str, Any]) -> list[Need]:
    """What AWS authorizes for one call (the call's own action and what it implies)."""
    action = ACTION_OF_OPERATION.get(f"{service}:{operation}", f"{service}:{operation}")
    if action in NO_PERMISSION:
        return []
    if action == "batch:SubmitJob":
        needs = [
            Need(action, batch_arn("job-queue", params["jobQueue"])),
            Need(action, batch_arn("job-definition", params["jobDefinition"])),
        ]
        return needs + ([Need("batch:TagResource", batch_arn("job", "new-job"))] if params.get("tags") else [])
    if action == "batch:RegisterJobDefinition":
        arn = batch_arn("job-definition", params["jobDefinitionName"])
        container = params.get("containerProperties") or {}
        roles = [container[k] for k in ("jobRoleArn", "executionRoleArn") if container.get(k)]
        needs = [Need(action, arn)] + [Need("iam:PassRole", role) for role in roles]
        return needs + ([Need("batch:TagResource", arn)] if params.get("tags") else [])
    if action == "batch:DeregisterJobDefinition":
        return [Need(action, batch_arn("job-definition", params["jobDefinition"]))]
    if action == "batch:TagResource":
        return [Need(action, params["resourceArn"])]
    if action == "batch:TerminateJob":
        return [Need(action, batch_arn("job", params["jobId"]))]
    if action == "logs:FilterLogEvents":
        return [Need(action, f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{params['logGroupName']}:*")]
    if action == "s3:GetEncryptionConfiguration":
        return [Need(action, f"arn:aws:s3:::{params['Bucket']}")]
    if action == "s3:PutObject":
        needs = [Need(action, f"arn:aws:s3:::{params['Bucket']}/{params['Key']}")]
        key = params.get("SSEKMSKeyId")
        if params.get("ServerSideEncryption") == "aws:kms" and key:
            arn = key if key.startswith("arn:") else f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key}"
            needs.append(Need("kms:GenerateDataKey", arn))
        return needs
    return [Need(action, "*")]


class CallRecorder:
    """Every AWS call made from the provider's own code (not the test's), in any thread."""

    def __init__(self, needs: Callable[[str, str, dict[str, Any]], list[Need]] | None = None) -> None:
        self.needs_of = needs or needs_of
        self.needs: list[Need] = []
        self.calls: list[str] = []
        self._lock = threading.Lock()

    @staticmethod
    def _from_provider() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename.startswith(PROVIDER):
                return True
            frame = frame.f_back  # type: ignore[assignment]
        return False

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        original = BaseClient._make_api_call
        recorder = self

        def make_api_call(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
            if recorder._from_provider():
                service = client.meta.service_model.signing_name
                with recorder._lock:
                    recorder.calls.append(f"{service}:{operation}")
                    recorder.needs += recorder.needs_of(service, operation, params)
            return original(client, operation, params)

        BaseClient._make_api_call = make_api_call  # type: ignore[method-assign]
        try:
            yield
        finally:
            BaseClient._make_api_call = original  # type: ignore[method-assign]


def allows(policy: dict[str, Any], need: Need) -> bool:
    """An Allow statement names the action and a resource pattern matching it (conditions aside)."""
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        matches = any(fnmatch.fnmatchcase(need.resource, pattern) for pattern in resources)
        if statement["Effect"] == "Allow" and need.action in actions and matches:
            return True
    return False


def granted_actions(policy: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for statement in policy["Statement"]:
        found |= set(statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    return found


def policies_of(outputs: dict[str, str], iam: Any) -> dict[str, dict[str, Any]]:
    """Each policy output of a stack -> its document."""
    policies = {}
    for name, arn in outputs.items():
        if ":policy/" in arn:
            version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
            policies[name] = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    return policies


def mode_policy(setting_policies: dict[str, dict[str, Any]], mode: str) -> dict[str, Any]:
    """What the connection's identity holds for a mode: the statements of all its policies together."""
    return {"Statement": [s for key in POLICY_OUTPUTS_OF_MODE[mode] for s in setting_policies[key]["Statement"]]}


def deploy(cloudformation: Any, parameters: dict[str, str]) -> dict[str, str]:
    stack = f"airflow-hpc-batch-{uuid.uuid4().hex[:6]}"
    cloudformation.create_stack(
        StackName=stack,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE"
    return {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}


@dataclass
class Setting:
    queue: str
    template: str
    bucket: str
    key_arn: str
    template_role: str
    auto_role: str
    policies: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def setting(moto_aws: MotoAws) -> Setting:
    """A held queue, a template carrying a job role, an SSE-KMS bucket, and the stack deployed for them."""
    iam = moto_aws.client("iam")
    roles = [
        iam.create_role(RoleName=f"job-{uuid.uuid4().hex[:8]}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        for _ in range(2)
    ]
    queue = moto_aws.make_queue(f"iam-{uuid.uuid4().hex[:8]}", held=True)
    template = f"iam-template-{uuid.uuid4().hex[:6]}"
    moto_aws.client("batch").register_job_definition(
        jobDefinitionName=template,
        type="container",
        containerProperties={"image": "repo/app:1", "vcpus": 1, "memory": 512, "jobRoleArn": roles[0]},
    )
    bucket = f"scripts-{uuid.uuid4().hex[:8]}"
    key_arn = moto_aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}}]
        },
    )
    # Every optional part switched on; a stack without them is checked by the test below.
    parameters = {
        "JobQueueArns": batch_arn("job-queue", queue),
        "LockedDefinitionNames": template,
        "TemplateDefinitionNames": template,
        "PassRoleArns": ",".join(roles),
        "ScriptBucket": bucket,
        "ScriptKmsKeyArn": key_arn,
    }
    policies = policies_of(deploy(moto_aws.client("cloudformation"), parameters), iam)
    return Setting(queue, template, bucket, key_arn, roles[0], roles[1], policies)


def test_each_modes_policies_grant_exactly_the_actions_the_hook_lists_for_it(setting: Setting) -> None:
    for mode in POLICY_OUTPUTS_OF_MODE:
        granted = granted_actions(mode_policy(setting.policies, mode))
        assert granted == set(ACTIONS_BY_MODE[mode]) | set(ACTIONS_SCRIPT_UPLOAD)
    assert granted_actions(setting.policies["ScriptReaderPolicyArn"]) == {"s3:GetObject", "kms:Decrypt"}


def test_without_the_optional_parts_the_stack_deploys_with_the_mode_policies_alone(moto_aws: MotoAws) -> None:
    # "none" is PassRoleArns' default, passed explicitly: moto leaves a CommaDelimitedList's *default*
    # unsplit (so the condition on it comes out wrong), AWS splits it.
    outputs = deploy(
        moto_aws.client("cloudformation"), {"JobQueueArns": batch_arn("job-queue", "q"), "PassRoleArns": "none"}
    )
    assert set(outputs) == {"LockedPolicyArn", "RevisionsPolicyArn", "AutoPolicyArn"}
    policies = policies_of(outputs, moto_aws.client("iam"))
    registering = set(ACTIONS_BY_MODE["revisions"]) - {"iam:PassRole"}
    assert granted_actions(policies["LockedPolicyArn"]) == set(ACTIONS_BY_MODE["locked"])
    assert granted_actions(policies["RevisionsPolicyArn"]) == registering
    assert granted_actions(policies["AutoPolicyArn"]) == registering
    with_bucket = deploy(
        moto_aws.client("cloudformation"),
        {"JobQueueArns": batch_arn("job-queue", "q"), "PassRoleArns": "none", "ScriptBucket": "b"},
    )
    upload = policies_of(with_bucket, moto_aws.client("iam"))["ScriptUploadPolicyArn"]
    assert granted_actions(upload) == set(ACTIONS_SCRIPT_UPLOAD) - {"kms:GenerateDataKey"}


def operator_for(mode: str, setting: Setting, task_id: str, command: str) -> BatchRevisionOperator:
    kwargs: dict[str, Any] = {}
    if mode == "locked":
        kwargs["job_definition"] = setting.template
    elif mode == "revisions":
        kwargs |= {"job_definition": setting.template, "job_definition_mode": "revisions", "image": "repo/app:2"}
    else:
        kwargs |= {"image": "repo/auto:1", "job_role_arn": setting.auto_role}
    return BatchRevisionOperator(
        task_id=task_id,
        command=command,
        aws_conn_id=CONN_ID,
        job_queue=setting.queue,
        script_bucket=setting.bucket,
        poll_interval=0.5,
        **kwargs,
    )


async def defer(op: BatchRevisionOperator, ti: FakeTI) -> BatchJobTrigger:
    with pytest.raises(TaskDeferred) as deferred:
        await asyncio.to_thread(op.execute, {"ti": ti})  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert isinstance(trigger, BatchJobTrigger)
    store = MemoryPositionStore()
    trigger.position_store = lambda: store  # type: ignore[method-assign]
    return trigger


async def run_mode(mode: str, setting: Setting, aws: MotoAws) -> None:
    """A task with a large script that streams and succeeds; a task a user stops while it runs."""
    big = "\n".join(f"echo line {i} {'x' * 60}" for i in range(400))
    op = operator_for(mode, setting, f"{mode}-big", big)
    ti = FakeTI(op.task_id, run_id=uuid.uuid4().hex)
    trigger = await defer(op, ti)
    events = asyncio.ensure_future(anext(trigger.run()))
    now = int(time.time() * 1000)
    await asyncio.sleep(1)
    aws.put_lines(str(HeldJobs.job(trigger.job_id).log_stream_name), [(now, "a line")])
    await asyncio.sleep(1.5)
    aws.held.finish(trigger.job_id, success=True, exit_code=0)
    event = await asyncio.wait_for(events, 30)
    assert await asyncio.to_thread(op.execute_complete, {"ti": ti}, event) == trigger.job_id  # type: ignore[arg-type]
    stopped = operator_for(mode, setting, f"{mode}-stopped", "sleep 600")
    trigger = await defer(stopped, FakeTI(stopped.task_id, run_id=uuid.uuid4().hex))
    watching = asyncio.ensure_future(anext(trigger.run()))
    await asyncio.sleep(1.5)
    watching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watching
    await trigger.on_kill()
    assert HeldJobs.job(trigger.job_id).status == "FAILED"


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["locked", "revisions", "auto"])
async def test_every_call_the_batch_code_makes_is_allowed_by_its_modes_policy(
    mode: str, setting: Setting, aws: MotoAws
) -> None:
    recorder = CallRecorder()
    with recorder.recording():
        await run_mode(mode, setting, aws)
    policy = mode_policy(setting.policies, mode)
    refused = sorted({f"{need.action} on {need.resource}" for need in recorder.needs if not allows(policy, need)})
    assert refused == [], f"{mode}: not granted by {', '.join(POLICY_OUTPUTS_OF_MODE[mode])}"
    used = {need.action for need in recorder.needs}
    # Everything the policy grants is used (it is the least), but for the race-only deregistration.
    unused = granted_actions(policy) - used - {"batch:DeregisterJobDefinition"}
    assert unused == set(), f"{mode}: granted but never used: {sorted(unused)}"
    print(f"\n{mode}: {len(recorder.calls)} calls, actions used: {sorted(used)}")
