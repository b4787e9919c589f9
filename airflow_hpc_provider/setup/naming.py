"""Every name the AWS set-up gives, derived from one ``--name`` prefix, and the tag that marks it as made here.

The tag ``airflow-hpc:setup=<name>`` is how ``cleanup`` knows what it made: a resource that has the
expected name but not this tag (or the tag of another set-up) is never changed or deleted.
IAM is global while everything else is regional, so IAM names carry the region: the same prefix
set up in two regions gives two independent sets that a cleanup in one region leaves alone in the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_hpc_provider.errors import SetupError

TAG_KEY = "airflow-hpc:setup"
# On the job queue: the job_definition_mode chosen at provision, so `show` prints the same arguments.
MODE_TAG_KEY = "airflow-hpc:setup-mode"

NAME_MAX_CHARS = 20
_NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_REGION_PATTERN = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")


def check_name(name: str) -> str:
    """The prefix as given, or a ``SetupError`` saying what a prefix may be.

    Lower case because S3 bucket names must be; at most 20 characters so that the longest derived
    name (the bucket, with the account id and the region) stays within S3's 63.
    """
    if not _NAME_PATTERN.fullmatch(name) or len(name) > NAME_MAX_CHARS:
        raise SetupError(
            f"--name {name!r}: use 1 to {NAME_MAX_CHARS} lower-case letters, digits and single hyphens, "
            "starting with a letter (e.g. 'research-batch'); every resource name is derived from it"
        )
    return name


def check_region(region: str) -> str:
    if not _REGION_PATTERN.fullmatch(region):
        raise SetupError(f"region {region!r} is not an AWS region name (e.g. 'eu-west-1')")
    return region


@dataclass(frozen=True)
class SetupNames:
    """The names of one set-up: ``name`` in ``region`` of ``account``."""

    name: str
    region: str
    account: str

    @property
    def tags(self) -> dict[str, str]:
        return {TAG_KEY: self.name}

    def _iam(self, purpose: str) -> str:
        return f"{self.name}-{purpose}-{self.region}"

    # Batch
    @property
    def script_bucket(self) -> str:
        # Bucket names are global across all accounts: the account id and region make it ours alone.
        return f"{self.name}-scripts-{self.account}-{self.region}"

    @property
    def batch_security_group(self) -> str:
        return f"{self.name}-batch-jobs"

    @property
    def batch_service_role(self) -> str:
        return self._iam("batch-service")

    @property
    def batch_instance_role(self) -> str:
        """The role of the compute environment's EC2 instances; its instance profile has the same name."""
        return self._iam("batch-instance")

    @property
    def batch_execution_role(self) -> str:
        return self._iam("batch-execution")

    @property
    def batch_job_role(self) -> str:
        return self._iam("batch-job")

    @property
    def compute_environment(self) -> str:
        return f"{self.name}-compute"

    @property
    def job_queue(self) -> str:
        return f"{self.name}-queue"

    @property
    def job_definition(self) -> str:
        return f"{self.name}-job"

    @property
    def batch_policy_stack(self) -> str:
        return f"{self.name}-batch-policies"

    # EC2
    @property
    def ec2_security_group(self) -> str:
        return f"{self.name}-ec2-tasks"

    @property
    def ec2_stack(self) -> str:
        return f"{self.name}-ec2"
