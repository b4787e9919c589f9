"""The AWS Batch set-up: where ``BatchRevisionOperator`` tasks run, and the least the Airflow side needs.

Made, in this order (cleanup goes backwards): a security group without inbound rules (unless
``--security-group-ids`` names one), the script bucket, the Batch service role, the compute
environment's instance role and profile (EC2) or the jobs' execution role (Fargate), the jobs' own
role, the compute environment (0 vCPUs when idle), the job queue, a job definition template
(``revisions`` and ``locked`` modes; ``auto`` registers its own), the shipped policy stack
(``cloudformation/batch_revision.yaml``) and its script-reader policy on the jobs' role.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_hpc_provider.errors import SetupError
from airflow_hpc_provider.setup.access import AwsAccess
from airflow_hpc_provider.setup.iam import InstanceProfile, PolicyAttachment, ServiceRole, aws_managed_policy
from airflow_hpc_provider.setup.naming import MODE_TAG_KEY, TAG_KEY, SetupNames
from airflow_hpc_provider.setup.network import Network, SecurityGroup
from airflow_hpc_provider.setup.resources import Found, Resource, aws_step, wait_for
from airflow_hpc_provider.setup.stacks import Stack
from airflow_hpc_provider.setup.storage import SCRIPT_PREFIX, ScriptBucket

MODES = ("auto", "revisions", "locked")
COMPUTE_KINDS = ("ec2", "fargate")
DEFAULT_IMAGE = "public.ecr.aws/docker/library/bash:5.2"
LOG_GROUP = "/aws/batch/job"  # Batch's default, and the operator's for auto definitions
POLICY_TEMPLATE = "batch_revision.yaml"
BATCH_TIMEOUT_S = 900

# What the Airflow connection's role or user needs for each job_definition_mode: outputs of the
# shipped template. tests/integration/batch/test_batch_iam_policy.py runs every mode under exactly
# these and checks that each call the operator makes is allowed.
POLICY_OUTPUTS_OF_MODE: dict[str, tuple[str, ...]] = {
    "locked": ("LockedPolicyArn", "ScriptUploadPolicyArn"),
    "revisions": ("RevisionsPolicyArn", "PassRolesPolicyArn", "ScriptUploadPolicyArn"),
    "auto": ("AutoPolicyArn", "PassRolesPolicyArn", "ScriptUploadPolicyArn"),
}


@dataclass(frozen=True)
class BatchOptions:
    mode: str = "auto"
    compute: str = "ec2"
    max_vcpus: int = 16
    instance_types: tuple[str, ...] = ("optimal",)
    image: str = DEFAULT_IMAGE
    kms_key_arn: str | None = None
    script_expiry_days: int = 7
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SetupError(f"--mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.compute not in COMPUTE_KINDS:
            raise SetupError(f"--compute {self.compute!r}: use ec2 or fargate")
        if self.max_vcpus < 1:
            raise SetupError(f"--max-vcpus {self.max_vcpus}: at least 1")
        if self.script_expiry_days < 1:
            raise SetupError(f"--script-expiry-days {self.script_expiry_days}: at least 1")
        if self.kms_key_arn is not None and not self.kms_key_arn.startswith("arn:"):
            raise SetupError(f"--kms-key-arn {self.kms_key_arn!r}: give the key's full ARN")

    @property
    def platform(self) -> str:
        return self.compute.upper()


class ComputeEnvironment(Resource):
    kind = "Batch compute environment"

    def __init__(self, batch: Any, name: str, setup_name: str) -> None:
        super().__init__(name, setup_name)
        self.batch = batch
        self.arn = ""
        self.compute_type = ""  # EC2 or FARGATE, once found
        # Set before create/converge (provision only).
        self.options: BatchOptions | None = None
        self.network: Network | None = None
        self.service_role: ServiceRole | None = None
        self.instance_profile: InstanceProfile | None = None
        # Called at create time: a security group made earlier in the same run has its id by then.
        self.security_group_ids: Callable[[], tuple[str, ...]] = tuple

    def _describe(self) -> dict[str, Any] | None:
        found = self.batch.describe_compute_environments(computeEnvironments=[self.name])["computeEnvironments"]
        live = [env for env in found if env.get("status") != "DELETED"]
        return live[0] if live else None

    def find(self) -> Found | None:
        with aws_step(f"reading {self.kind} {self.name}"):
            env = self._describe()
        if env is None:
            return None
        self.arn = env["computeEnvironmentArn"]
        self.compute_type = env.get("computeResources", {}).get("type", "")
        tags = env.get("tags") or {}
        return Found(owner=tags.get(TAG_KEY), detail=f"{env.get('status')}, {env.get('state')}")

    def _compute_resources(self) -> dict[str, Any]:
        assert self.options and self.network
        resources: dict[str, Any] = {
            "type": self.options.platform,
            "maxvCpus": self.options.max_vcpus,
            "subnets": list(self.network.subnet_ids),
            "securityGroupIds": list(self.security_group_ids()),
        }
        if self.options.compute == "ec2":
            assert self.instance_profile
            resources |= {
                "allocationStrategy": "BEST_FIT_PROGRESSIVE",
                "minvCpus": 0,  # nothing runs, nothing is paid, while no job waits
                "desiredvCpus": 0,
                "instanceTypes": list(self.options.instance_types),
                "instanceRole": self.instance_profile.arn,
                "tags": self.tags,  # on the instances it starts, for cost reports
            }
        return resources

    def create(self) -> str:
        assert self.service_role
        with aws_step(f"creating {self.kind} {self.name}"):
            self.arn = self.batch.create_compute_environment(
                computeEnvironmentName=self.name,
                type="MANAGED",
                state="ENABLED",
                computeResources=self._compute_resources(),
                serviceRole=self.service_role.arn,
                tags=self.tags,
            )["computeEnvironmentArn"]
            self._wait_valid("creating")
        return self.arn

    def _wait_valid(self, doing: str) -> None:
        def valid() -> bool:
            env = self._describe()
            status = env.get("status") if env else None
            if status == "INVALID":
                assert env is not None
                raise SetupError(
                    f"{doing} {self.kind} {self.name}: AWS Batch says INVALID: {env.get('statusReason')} "
                    "(fix the cause, then run provision again: it resumes here)"
                )
            return status == "VALID"

        wait_for(f"{doing} {self.kind} {self.name}", valid, timeout_s=BATCH_TIMEOUT_S)

    def converge(self, found: Found) -> list[str]:
        assert self.options and self.service_role
        with aws_step(f"checking {self.kind} {self.name}"):
            env = self._describe()
            assert env is not None
            have = env.get("computeResources", {})
            want = self._compute_resources()
            conflicts: list[str] = [
                key
                for key in ("type", "subnets", "securityGroupIds", "instanceTypes", "instanceRole")
                if key in want and _comparable(have.get(key)) != _comparable(want[key])
            ]
            if env.get("serviceRole") != self.service_role.arn:
                conflicts.append("serviceRole")
            if conflicts:
                raise SetupError(
                    f"{self.kind} {self.name} differs from what was asked in {', '.join(conflicts)}, which AWS cannot "
                    "change in place here: run cleanup, then provision with the new options (or keep the old ones)"
                )
            changes: dict[str, Any] = {}
            if int(have.get("maxvCpus", 0)) != self.options.max_vcpus:
                changes["computeResources"] = {"maxvCpus": self.options.max_vcpus}
            if env.get("state") != "ENABLED":
                changes["state"] = "ENABLED"
            if not changes:
                return []
            self.batch.update_compute_environment(computeEnvironment=self.name, **changes)
            self._wait_valid("updating")
        return [f"max vCPUs {self.options.max_vcpus}"] * ("computeResources" in changes) + ["enabled"] * (
            "state" in changes
        )

    def delete(self, found: Found) -> list[str]:
        with aws_step(f"deleting {self.kind} {self.name}"):
            env = self._describe()
            if env is None:
                return []
            if env.get("state") != "DISABLED":
                self.batch.update_compute_environment(computeEnvironment=self.name, state="DISABLED")
            wait_for(
                f"disabling {self.kind} {self.name}",
                lambda: (self._describe() or {}).get("status") in ("VALID", "INVALID", None),
                timeout_s=BATCH_TIMEOUT_S,
            )
            self.batch.delete_compute_environment(computeEnvironment=self.name)
            wait_for(f"deleting {self.kind} {self.name}", lambda: self._describe() is None, timeout_s=BATCH_TIMEOUT_S)
        return []


def _comparable(value: Any) -> Any:
    return sorted(value) if isinstance(value, list) else value


class JobQueue(Resource):
    kind = "Batch job queue"

    def __init__(self, batch: Any, name: str, setup_name: str, environment: ComputeEnvironment) -> None:
        super().__init__(name, setup_name)
        self.batch = batch
        self.environment = environment
        self.arn = ""
        self.mode: str | None = None  # the job_definition_mode chosen at provision (its tag)
        self.wanted_mode = "auto"  # provision: the one asked for

    def _describe(self) -> dict[str, Any] | None:
        found = self.batch.describe_job_queues(jobQueues=[self.name])["jobQueues"]
        live = [queue for queue in found if queue.get("status") != "DELETED"]
        return live[0] if live else None

    def find(self) -> Found | None:
        with aws_step(f"reading {self.kind} {self.name}"):
            queue = self._describe()
        if queue is None:
            return None
        self.arn = queue["jobQueueArn"]
        tags = queue.get("tags") or {}
        self.mode = tags.get(MODE_TAG_KEY)
        return Found(owner=tags.get(TAG_KEY), detail=f"{queue.get('status')}, {queue.get('state')}")

    def _order(self) -> list[dict[str, Any]]:
        return [{"order": 1, "computeEnvironment": self.environment.arn}]

    def create(self) -> str:
        with aws_step(f"creating {self.kind} {self.name}"):
            self.arn = self.batch.create_job_queue(
                jobQueueName=self.name,
                state="ENABLED",
                priority=1,
                computeEnvironmentOrder=self._order(),
                tags={**self.tags, MODE_TAG_KEY: self.wanted_mode},
            )["jobQueueArn"]
            self.mode = self.wanted_mode
            self._wait_valid("creating")
        return self.arn

    def _wait_valid(self, doing: str) -> None:
        wait_for(
            f"{doing} {self.kind} {self.name}",
            lambda: (self._describe() or {}).get("status") == "VALID",
            timeout_s=BATCH_TIMEOUT_S,
        )

    def converge(self, found: Found) -> list[str]:
        changes: list[str] = []
        with aws_step(f"checking {self.kind} {self.name}"):
            queue = self._describe()
            assert queue is not None
            update: dict[str, Any] = {}
            order = [
                {"order": int(o["order"]), "computeEnvironment": o["computeEnvironment"]}
                for o in queue.get("computeEnvironmentOrder", [])
            ]
            if order != self._order():
                update["computeEnvironmentOrder"] = self._order()
                changes.append(f"compute environment {self.environment.name}")
            if queue.get("state") != "ENABLED":
                update["state"] = "ENABLED"
                changes.append("enabled")
            if update:
                self.batch.update_job_queue(jobQueue=self.name, **update)
                self._wait_valid("updating")
            if self.mode != self.wanted_mode:
                self.batch.tag_resource(resourceArn=self.arn, tags={MODE_TAG_KEY: self.wanted_mode})
                changes.append(f"mode {self.wanted_mode}")
                self.mode = self.wanted_mode
        return changes

    def delete(self, found: Found) -> list[str]:
        with aws_step(f"deleting {self.kind} {self.name}"):
            queue = self._describe()
            if queue is None:
                return []
            if queue.get("state") != "DISABLED":
                self.batch.update_job_queue(jobQueue=self.name, state="DISABLED")
            wait_for(
                f"disabling {self.kind} {self.name}",
                lambda: (self._describe() or {}).get("status") in ("VALID", "INVALID", None),
                timeout_s=BATCH_TIMEOUT_S,
            )
            self.batch.delete_job_queue(jobQueue=self.name)
            wait_for(f"deleting {self.kind} {self.name}", lambda: self._describe() is None, timeout_s=BATCH_TIMEOUT_S)
        return []


class JobDefinitionTemplate(Resource):
    """The definition ``revisions`` tasks copy (swapping their image in) and ``locked`` tasks run as it is.

    A changed option registers a new revision (Batch definitions are immutable); cleanup deregisters
    the revisions carrying our tag. Batch keeps deregistered revisions as INACTIVE: nothing deletes them.
    """

    kind = "Batch job definition"

    def __init__(self, batch: Any, name: str, setup_name: str, job_role: ServiceRole, execution_role: ServiceRole):
        super().__init__(name, setup_name)
        self.batch = batch
        self.job_role = job_role
        self.execution_role = execution_role
        self.options: BatchOptions | None = None  # provision only

    def _active(self) -> list[dict[str, Any]]:
        pages = self.batch.get_paginator("describe_job_definitions").paginate(
            jobDefinitionName=self.name, status="ACTIVE"
        )
        found = [d for page in pages for d in page["jobDefinitions"] if d.get("status") == "ACTIVE"]
        return sorted(found, key=lambda d: int(d["revision"]))

    def find(self) -> Found | None:
        with aws_step(f"reading {self.kind} {self.name}"):
            active = self._active()
        if not active:
            return None
        latest = active[-1]
        tags = latest.get("tags") or {}
        return Found(owner=tags.get(TAG_KEY), detail=f"{self.name}:{latest['revision']}")

    def _container(self) -> dict[str, Any]:
        assert self.options
        container: dict[str, Any] = {
            "image": self.options.image,
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}],
            "jobRoleArn": self.job_role.arn,
        }
        if self.options.compute == "fargate":
            container |= {
                "executionRoleArn": self.execution_role.arn,
                "fargatePlatformConfiguration": {"platformVersion": "LATEST"},
                "networkConfiguration": {"assignPublicIp": "DISABLED"},
            }
        return container

    def _register(self) -> str:
        assert self.options
        registered = self.batch.register_job_definition(
            jobDefinitionName=self.name,
            type="container",
            containerProperties=self._container(),
            platformCapabilities=[self.options.platform],
            tags=self.tags,
        )
        return f"{self.name}:{registered['revision']}"

    def create(self) -> str:
        with aws_step(f"registering {self.kind} {self.name}"):
            return self._register()

    def converge(self, found: Found) -> list[str]:
        assert self.options
        with aws_step(f"checking {self.kind} {self.name}"):
            latest = self._active()[-1]
            have = latest.get("containerProperties", {})
            want = self._container()
            differs = [key for key in want if _comparable_container(have.get(key)) != _comparable_container(want[key])]
            if latest.get("platformCapabilities", ["EC2"]) != [self.options.platform]:
                differs.append("platformCapabilities")
            if not differs:
                return []
            return [f"new revision {self._register()} ({', '.join(differs)})"]

    def delete(self, found: Found) -> list[str]:
        notes: list[str] = []
        with aws_step(f"deregistering {self.kind} {self.name}"):
            for definition in self._active():
                if (definition.get("tags") or {}).get(TAG_KEY) == self.setup_name:
                    self.batch.deregister_job_definition(jobDefinition=definition["jobDefinitionArn"])
                else:
                    notes.append(f"left revision {definition['revision']} (not registered by this set-up)")
        return notes


def _comparable_container(value: Any) -> Any:
    # Order-free, and free of the key order AWS (or moto) answers in: {"value", "type"} == {"type", "value"}.
    if isinstance(value, list):
        return sorted(json.dumps(item, sort_keys=True) for item in value)
    return value


@dataclass
class BatchSetup:
    """Every resource a Batch set-up may have, and which of them the given options need."""

    names: SetupNames
    access: AwsAccess
    options: BatchOptions = field(default_factory=BatchOptions)

    def __post_init__(self) -> None:
        names, access, setup = self.names, self.access, self.names.name
        iam, batch = access.client("iam"), access.client("batch")
        self.security_group = SecurityGroup(
            access.client("ec2"),
            names.batch_security_group,
            setup,
            description=f"airflow-hpc set-up {setup}: AWS Batch jobs (no inbound rules)",
        )
        self.bucket = ScriptBucket(
            access.client("s3"),
            names.script_bucket,
            setup,
            region=access.region,
            kms_key_arn=self.options.kms_key_arn,
            expiry_days=self.options.script_expiry_days,
        )

        def managed(name: str) -> str:
            return aws_managed_policy(access.partition, name)

        self.service_role = ServiceRole(
            iam,
            names.batch_service_role,
            setup,
            service="batch.amazonaws.com",
            description=f"airflow-hpc set-up {setup}: AWS Batch manages the compute environment",
            managed_policies=[managed("service-role/AWSBatchServiceRole")],
        )
        self.instance_role = ServiceRole(
            iam,
            names.batch_instance_role,
            setup,
            service="ec2.amazonaws.com",
            description=f"airflow-hpc set-up {setup}: the compute environment's ECS container instances",
            managed_policies=[managed("service-role/AmazonEC2ContainerServiceforEC2Role")],
        )
        self.instance_profile = InstanceProfile(iam, self.instance_role)
        self.execution_role = ServiceRole(
            iam,
            names.batch_execution_role,
            setup,
            service="ecs-tasks.amazonaws.com",
            description=f"airflow-hpc set-up {setup}: Fargate pulls the image and writes the logs",
            managed_policies=[managed("service-role/AmazonECSTaskExecutionRolePolicy")],
        )
        self.job_role = ServiceRole(
            iam,
            names.batch_job_role,
            setup,
            service="ecs-tasks.amazonaws.com",
            description=f"airflow-hpc set-up {setup}: the jobs' own role (job_role_arn); attach what they need",
        )
        self.environment = ComputeEnvironment(batch, names.compute_environment, setup)
        self.queue = JobQueue(batch, names.job_queue, setup, self.environment)
        self.definition = JobDefinitionTemplate(batch, names.job_definition, setup, self.job_role, self.execution_role)
        self.stack = Stack(
            access.client("cloudformation"),
            iam,
            names.batch_policy_stack,
            setup,
            template_file=POLICY_TEMPLATE,
            parameters=self.stack_parameters,
            own_roles=[self.job_role],
        )
        self.reader = PolicyAttachment(
            iam, self.job_role, "ScriptReaderPolicy", lambda: self.stack.outputs.get("ScriptReaderPolicyArn")
        )

    def every_resource(self) -> list[Resource]:
        """In the order they are made."""
        return [
            self.security_group,
            self.bucket,
            self.service_role,
            self.instance_role,
            self.instance_profile,
            self.execution_role,
            self.job_role,
            self.environment,
            self.queue,
            self.definition,
            self.stack,
            self.reader,
        ]

    def needed(self, options: BatchOptions) -> list[Resource]:
        """The resources these options need, in the order they are made."""
        skip: set[int] = set()
        if options.security_group_ids:
            skip.add(id(self.security_group))
        if options.compute == "fargate":
            skip |= {id(self.instance_role), id(self.instance_profile)}
        else:
            skip.add(id(self.execution_role))
        if options.mode == "auto":
            skip.add(id(self.definition))
        return [r for r in self.every_resource() if id(r) not in skip]

    def prepare(self, network: Network) -> None:
        """Hand the provision options to the resources that are made from them."""
        options = self.options
        self.security_group.network = network
        self.environment.options = options
        self.environment.network = network
        self.environment.service_role = self.service_role
        self.environment.instance_profile = self.instance_profile
        self.definition.options = options
        self.queue.wanted_mode = options.mode
        self.environment.security_group_ids = lambda: options.security_group_ids or (self.security_group.group_id,)

    def stack_parameters(self) -> dict[str, str]:
        roles = [self.job_role.arn]
        if self.options.compute == "fargate":
            roles.append(self.execution_role.arn)
        return {
            "JobQueueArns": self.queue.arn,
            "LockedDefinitionNames": self.names.job_definition,
            "TemplateDefinitionNames": self.names.job_definition,
            "PassRoleArns": ",".join(roles),
            "LogGroupName": LOG_GROUP,
            "ScriptBucket": self.names.script_bucket,
            "ScriptPrefix": SCRIPT_PREFIX,
            "ScriptKmsKeyArn": self.options.kms_key_arn or "",
        }

    def inferred_options(self) -> BatchOptions:
        """What an existing set-up was made with, as far as `show` needs it (after every find)."""
        compute = "fargate" if self.environment.compute_type.startswith("FARGATE") else "ec2"
        mode = self.queue.mode if self.queue.mode in MODES else "auto"
        return BatchOptions(mode=mode, compute=compute, image=self.options.image)

    def policies_to_attach(self, mode: str) -> list[str]:
        return [self.stack.outputs[key] for key in POLICY_OUTPUTS_OF_MODE[mode] if key in self.stack.outputs]

    def operator_arguments(self, options: BatchOptions, conn_id: str) -> dict[str, Any]:
        """What a BatchRevisionOperator of this set-up is given (the queue comes from the connection)."""
        arguments: dict[str, Any] = {"aws_conn_id": conn_id}
        if options.mode == "auto":
            arguments |= {"image": options.image, "job_role_arn": self.job_role.arn}
            if options.compute == "fargate":
                arguments["execution_role_arn"] = self.execution_role.arn
        else:
            arguments |= {"job_definition": self.names.job_definition, "job_definition_mode": options.mode}
            if options.mode == "revisions":
                arguments["image"] = options.image
        if options.compute == "fargate":
            arguments["platform"] = "FARGATE"
        arguments["script_bucket"] = self.names.script_bucket
        return arguments

    def connection_extra(self) -> dict[str, Any]:
        return {"job_queue": self.names.job_queue}


def parse_ids(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item.strip())
