"""The AWS Batch set-up: where ``BatchRevisionOperator`` tasks run, and the least the Airflow side needs.

Made, in this order (cleanup goes backwards): a security group without inbound rules (unless
``--security-group-ids`` names one), the script bucket, the Batch service role, the compute
environment's instance role and profile (EC2) or the jobs' execution role (Fargate), the jobs' own
role, the compute environment (0 vCPUs when idle), the job queue, a job definition template
(``revisions`` and ``locked`` modes; ``auto`` registers its own), the shipped policy stack
(``cloudformation/batch_revision.yaml``) and its script-reader policy on the jobs' role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_hpc_provider.setup.access import AwsAccess
from airflow_hpc_provider.setup.batch_options import MODES, BatchOptions
from airflow_hpc_provider.setup.batch_resources import ComputeEnvironment, JobDefinitionTemplate, JobQueue
from airflow_hpc_provider.setup.iam import InstanceProfile, PolicyAttachment, ServiceRole, aws_managed_policy
from airflow_hpc_provider.setup.naming import SetupNames
from airflow_hpc_provider.setup.network import Network, SecurityGroup
from airflow_hpc_provider.setup.resources import Resource
from airflow_hpc_provider.setup.stacks import Stack
from airflow_hpc_provider.setup.storage import SCRIPT_PREFIX, ScriptBucket

LOG_GROUP = "/aws/batch/job"  # Batch's default, and the operator's for auto definitions
POLICY_TEMPLATE = "batch_revision.yaml"

# What the Airflow connection's role or user needs for each job_definition_mode: outputs of the
# shipped template. tests/integration/batch/test_batch_iam_policy.py runs every mode under exactly
# these and checks that each call the operator makes is allowed.
POLICY_OUTPUTS_OF_MODE: dict[str, tuple[str, ...]] = {
    "locked": ("LockedPolicyArn", "ScriptUploadPolicyArn"),
    "revisions": ("RevisionsPolicyArn", "PassRolesPolicyArn", "ScriptUploadPolicyArn"),
    "auto": ("AutoPolicyArn", "PassRolesPolicyArn", "ScriptUploadPolicyArn"),
}


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
