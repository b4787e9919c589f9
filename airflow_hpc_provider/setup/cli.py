"""The set-up's command line: ``airflow hpc-aws-setup {batch,ec2} {provision,show,cleanup}``, and the same
as ``python -m airflow_hpc_provider.setup ...`` where no ``airflow`` command is at hand.

Airflow 3.3 adds a provider's commands from the ``cli`` entry of ``get_provider_info()`` when its CLI
starts, so this module imports nothing heavy: the commands themselves
(:mod:`airflow_hpc_provider.setup.commands`, boto3) load only when one runs. One table of flags
feeds both parsers.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.cli.cli_config import CLICommand

GROUP = "hpc-aws-setup"
COMMANDS_MODULE = "airflow_hpc_provider.setup.commands"


@dataclass(frozen=True)
class Flag:
    flags: tuple[str, ...]
    help: str
    options: dict[str, Any] = field(default_factory=dict)


NAME = Flag(
    ("--name",),
    "Prefix of every name the set-up gives (1-20 lower-case letters, digits and hyphens); also its tag value. "
    "Asked for when missing.",
)
AWS_CONN_ID = Flag(
    ("--aws-conn-id",),
    "Airflow 'aws' connection to work with (credentials, role, region, endpoint_url). "
    "Default: none, boto3's usual chain (AWS_PROFILE, ~/.aws, an instance role).",
)
REGION = Flag(("--region",), "AWS region. Default: the connection's region_name, else AWS_DEFAULT_REGION.")
NON_INTERACTIVE = Flag(
    ("--non-interactive",),
    "Never ask: every choice from flags or defaults, a clear error for a missing one, no confirmation (for CI).",
    {"action": "store_true"},
)
JSON = Flag(
    ("--json",),
    "Print one JSON document (resources, connection, policies, operator arguments).",
    {"action": "store_true"},
)
SUBNET_IDS = Flag(("--subnet-ids",), "Comma-separated subnet ids, all in one VPC. Default: the region's default VPC.")
SECURITY_GROUP_IDS = Flag(
    ("--security-group-ids",),
    "Comma-separated security group ids to use instead of making one without inbound rules.",
)
DETACH_POLICIES = Flag(
    ("--detach-policies",),
    "Detach the set-up's policies from the roles, users and groups you attached them to, instead of stopping.",
    {"action": "store_true"},
)


def task_conn_id(default: str) -> Flag:
    return Flag(
        ("--task-conn-id",),
        f"Id of the Airflow connection the tasks will use, in what is printed (default: {default}).",
        {"default": default},
    )


COMMON = (NAME, AWS_CONN_ID, REGION, NON_INTERACTIVE, JSON)

BATCH_IMAGE = Flag(
    ("--image",),
    "Container image of the job definition template (revisions, locked) or of auto tasks. "
    "Scripts offloaded to S3 need the AWS CLI in it. Default: public.ecr.aws/docker/library/bash:5.2.",
)
BATCH_PROVISION = (
    Flag(
        ("--mode",),
        "job_definition_mode the tasks will use: auto (no definition needed), revisions (a template is "
        "registered) or locked (the same definition, run as it is). Default: auto.",
        {"choices": ("auto", "revisions", "locked"), "default": "auto"},
    ),
    Flag(
        ("--compute",),
        "Where jobs run: ec2 (instances started for jobs, none while idle) or fargate. Default: ec2.",
        {"choices": ("ec2", "fargate"), "default": "ec2"},
    ),
    Flag(
        ("--max-vcpus",), "Most vCPUs the compute environment runs at once. Default: 16.", {"type": int, "default": 16}
    ),
    Flag(
        ("--instance-types",),
        "Comma-separated EC2 instance types or families for --compute ec2. Default: optimal.",
        {"default": "optimal"},
    ),
    BATCH_IMAGE,
    Flag(
        ("--kms-key-arn",),
        "Encrypt the script bucket with this KMS key (SSE-KMS) instead of S3-managed keys (SSE-S3).",
    ),
    Flag(
        ("--script-expiry-days",),
        "Days after which offloaded scripts are deleted by the bucket's lifecycle rule. Default: 7.",
        {"type": int, "default": 7},
    ),
    SUBNET_IDS,
    SECURITY_GROUP_IDS,
    task_conn_id("aws_batch"),
)
BATCH_SHOW = (BATCH_IMAGE, task_conn_id("aws_batch"))
BATCH_CLEANUP = (
    DETACH_POLICIES,
    Flag(
        ("--empty-bucket",),
        "Also delete objects outside airflow-hpc/scripts/ in the script bucket (otherwise cleanup stops).",
        {"action": "store_true"},
    ),
)

EC2_CHOICES = (
    Flag(
        ("--ami-id",),
        "AMI of the task instances (Docker, the SSM agent, ec2-instance-connect), printed into the connection.",
    ),
    Flag(
        ("--instance-type",),
        "The 'default' entry of instance_types in the printed connection. Default: t3.small.",
        {"default": "t3.small"},
    ),
    SUBNET_IDS,
    SECURITY_GROUP_IDS,
    task_conn_id("aws_ec2"),
)
EC2_PROVISION = (
    Flag(("--os-user",), "Login user of the AMI (ec2-user, ubuntu...). Default: ec2-user.", {"default": "ec2-user"}),
    Flag(("--archive-bucket",), "Existing S3 bucket the tasks may archive their logs to (archive_s3_prefix)."),
    *EC2_CHOICES,
)
EC2_CLEANUP = (DETACH_POLICIES,)


@dataclass(frozen=True)
class Command:
    part: str
    verb: str
    help: str
    flags: Sequence[Flag]

    @property
    def function(self) -> str:
        return f"{self.part}_{self.verb}"


COMMANDS = (
    Command(
        "batch", "provision", "Make (or complete) the AWS Batch set-up; unchanged when run again.", BATCH_PROVISION
    ),
    Command("batch", "show", "Print what exists and what is missing, and the connection and arguments.", BATCH_SHOW),
    Command("batch", "cleanup", "Delete what provision made, and only that.", BATCH_CLEANUP),
    Command("ec2", "provision", "Deploy the EC2 set-up (the shipped stack); unchanged when run again.", EC2_PROVISION),
    Command("ec2", "show", "Print what exists and what is missing, and the connection and arguments.", EC2_CHOICES),
    Command("ec2", "cleanup", "Delete what provision made, and only that.", EC2_CLEANUP),
)
PARTS = {
    "batch": "AWS Batch: bucket, roles, compute environment, queue, definition, policies.",
    "ec2": ("EC2 ephemeral instances: security group, instance role and profile, policies (shipped stack)."),
}


def get_setup_cli_commands() -> list[CLICommand]:
    """The provider's Airflow CLI commands (the ``cli`` entry of ``get_provider_info()``)."""
    from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand, lazy_load_command

    def action(command: Command) -> ActionCommand:
        return ActionCommand(
            name=command.verb,
            help=command.help,
            func=lazy_load_command(f"{COMMANDS_MODULE}.{command.function}"),
            args=tuple(
                Arg(flag.flags, help=flag.help, **flag.options)  # type: ignore[no-untyped-call]
                for flag in (*COMMON, *command.flags)
            ),
        )

    groups = [
        GroupCommand(
            name=part,
            help=text,
            subcommands=[action(command) for command in COMMANDS if command.part == part],
        )
        for part, text in PARTS.items()
    ]
    return [
        GroupCommand(
            name=GROUP,
            help="Provision, show or clean up the AWS resources of the HPC provider's Batch and EC2 operators",
            subcommands=groups,
        )
    ]


def parser() -> argparse.ArgumentParser:
    """The same commands for ``python -m airflow_hpc_provider.setup``."""
    top = argparse.ArgumentParser(
        prog="python -m airflow_hpc_provider.setup",
        description="Provision, show or clean up the AWS resources of the HPC provider's Batch and EC2 operators.",
    )
    parts = top.add_subparsers(dest="part", metavar="PART", required=True)
    for part, text in PARTS.items():
        verbs = parts.add_parser(part, help=text).add_subparsers(dest="verb", metavar="COMMAND", required=True)
        for command in COMMANDS:
            if command.part == part:
                sub = verbs.add_parser(command.verb, help=command.help, description=command.help)
                for flag in (*COMMON, *command.flags):
                    sub.add_argument(*flag.flags, help=flag.help, **flag.options)
                sub.set_defaults(function=command.function)
    return top
