"""The AWS Batch resources of a set-up, each a :class:`~airflow_hpc_provider.setup.resources.Resource`
that can be found, made, converged and deleted: the compute environment (0 vCPUs when idle), the job
queue and the job definition template.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from airflow_hpc_provider.errors import SetupError
from airflow_hpc_provider.setup.batch_options import BatchOptions
from airflow_hpc_provider.setup.iam import InstanceProfile, ServiceRole
from airflow_hpc_provider.setup.naming import MODE_TAG_KEY, TAG_KEY
from airflow_hpc_provider.setup.network import Network
from airflow_hpc_provider.setup.resources import Found, Resource, aws_step, wait_for

BATCH_TIMEOUT_S = 900


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
