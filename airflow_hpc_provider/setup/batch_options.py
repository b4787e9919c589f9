"""The options of an AWS Batch set-up (``airflow hpc-aws-setup batch``), checked when they are given."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from airflow_hpc_provider.errors import SetupError

MODES = ("auto", "revisions", "locked")
COMPUTE_KINDS = ("ec2", "fargate")
DEFAULT_IMAGE = "public.ecr.aws/docker/library/bash:5.2"


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


def parse_ids(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item.strip())
