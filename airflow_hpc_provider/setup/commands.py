"""The six commands, each taking the parsed flags (from ``airflow hpc-aws-setup`` or ``python -m``).

A ``SetupError`` ends the command with its message on stderr and exit status 1, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import airflow_hpc_provider.aws_extra  # noqa: F401  (names the extra to install when boto3 is missing)
from airflow_hpc_provider.errors import SetupError
from airflow_hpc_provider.setup import plan
from airflow_hpc_provider.setup.access import AwsAccess, open_access
from airflow_hpc_provider.setup.batch import BatchSetup
from airflow_hpc_provider.setup.batch_options import DEFAULT_IMAGE, BatchOptions, parse_ids
from airflow_hpc_provider.setup.ec2 import Ec2Options, Ec2Setup
from airflow_hpc_provider.setup.naming import SetupNames, check_name
from airflow_hpc_provider.setup.network import resolve_network
from airflow_hpc_provider.setup.prompts import Prompter
from airflow_hpc_provider.setup.report import Output, Summary

Command = Callable[[argparse.Namespace], None]


def _command(function: Callable[[argparse.Namespace, Prompter, Output], None]) -> Command:
    @functools.wraps(function)
    def run(args: argparse.Namespace) -> None:
        prompter = Prompter(interactive=not args.non_interactive)
        output = Output(as_json=args.json)
        try:
            with _logs_to_stderr():
                function(args, prompter, output)
        except SetupError as error:
            sys.stdout.flush()
            sys.stderr.write(f"error: {error}\n")
            raise SystemExit(1) from None

    return run


@contextlib.contextmanager
def _logs_to_stderr() -> Iterator[None]:
    """Airflow's logging writes to stdout; here stdout is the report (or the JSON document), so logs move.

    Its stdlib handlers hold stdout; its structlog loggers take ``sys.stdout`` when first made, which
    happens during the command: both go to stderr. :class:`Output` keeps the real stdout.
    """
    stdout = sys.stdout
    moved = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is stdout
    ]
    for handler in moved:
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler in moved:
            handler.setStream(stdout)


def _open(args: argparse.Namespace, prompter: Prompter) -> tuple[SetupNames, AwsAccess]:
    name = args.name or prompter.ask(
        "Name of this set-up (prefix of every resource name, e.g. research)",
        flag="--name",
        why="every resource name is derived from it",
    )
    check_name(name)
    access = open_access(args.aws_conn_id, args.region, prompter)
    return SetupNames(name=name, region=access.region, account=access.account), access


def _where(access: AwsAccess) -> str:
    return f"account {access.account}, {access.region}"


def _summary(
    setup: BatchSetup | Ec2Setup,
    part: str,
    conn_id: str,
    operator: str,
    operator_arguments: dict[str, Any],
    attach_policies: list[str],
    notes: list[str],
) -> Summary:
    """A part's summary: what only the part knows, beside what every part says alike (where the
    set-up is; the task connection's extra with the region and the endpoint the set-up used)."""
    extra: dict[str, Any] = {"region_name": setup.access.region, **setup.connection_extra()}
    if setup.access.endpoint_url:  # the set-up's own connection points elsewhere (LocalStack, a proxy, moto)
        extra["endpoint_url"] = setup.access.endpoint_url
    return Summary(
        setup=setup.names.name,
        part=part,
        account=setup.names.account,
        region=setup.names.region,
        conn_id=conn_id,
        connection_extra=extra,
        operator=operator,
        operator_arguments=operator_arguments,
        attach_policies=attach_policies,
        notes=notes,
    )


# --- Batch --------------------------------------------------------------------------------------


def _batch_summary(setup: BatchSetup, options: BatchOptions, conn_id: str) -> Summary:
    notes = []
    if options.compute == "fargate":
        notes.append(
            "Fargate jobs get no public IP (the operator's and the template's assignPublicIp is DISABLED): the "
            "subnets need a NAT gateway or VPC endpoints to pull images and write logs"
        )
    if options.mode == "auto":
        notes.append("auto mode registers its own job definitions (airflow-hpc-<hash>): none was made here")
    notes.append(
        "scripts larger than offload_threshold_bytes go to the bucket; the image then needs the AWS CLI to fetch them"
    )
    arguments = setup.operator_arguments(options, conn_id)
    policies = setup.policies_to_attach(options.mode)
    return _summary(setup, "batch", conn_id, "BatchRevisionOperator", arguments, policies, notes)


@_command
def batch_provision(args: argparse.Namespace, prompter: Prompter, output: Output) -> None:
    names, access = _open(args, prompter)
    options = BatchOptions(
        mode=args.mode,
        compute=args.compute,
        max_vcpus=args.max_vcpus,
        instance_types=parse_ids(args.instance_types),
        image=args.image or DEFAULT_IMAGE,
        kms_key_arn=args.kms_key_arn,
        script_expiry_days=args.script_expiry_days,
        subnet_ids=parse_ids(args.subnet_ids),
        security_group_ids=parse_ids(args.security_group_ids),
    )
    setup = BatchSetup(names, access, options)
    setup.prepare(resolve_network(access.client("ec2"), options.subnet_ids, prompter))
    plan.provision(setup.needed(options), names.name, prompter, output.report, _where(access))
    output.finish(_batch_summary(setup, options, args.task_conn_id))


@_command
def batch_show(args: argparse.Namespace, prompter: Prompter, output: Output) -> None:
    names, access = _open(args, prompter)
    setup = BatchSetup(names, access, BatchOptions(image=args.image or DEFAULT_IMAGE))
    outcomes = plan.show(
        setup.every_resource(), lambda: setup.needed(setup.inferred_options()), names.name, output.report
    )
    complete = all(o.state == "exists" for o in outcomes) and bool(outcomes)
    if not complete:
        output.say(f"The set-up {names.name!r} is not complete in {_where(access)}: run provision.")
    output.finish(_batch_summary(setup, setup.inferred_options(), args.task_conn_id) if complete else None)


@_command
def batch_cleanup(args: argparse.Namespace, prompter: Prompter, output: Output) -> None:
    names, access = _open(args, prompter)
    setup = BatchSetup(names, access)
    setup.stack.detach_policies = args.detach_policies
    setup.bucket.empty_on_delete = args.empty_bucket
    outcomes = plan.cleanup(setup.every_resource(), names.name, prompter, output.report, _where(access))
    if not outcomes:
        output.say(f"Nothing of set-up {names.name!r} in {_where(access)}.")
    output.finish(None)


# --- EC2 ----------------------------------------------------------------------------------------


def _ec2_options(args: argparse.Namespace, **stack_choices: str) -> Ec2Options:
    return Ec2Options(
        ami_id=args.ami_id or "",
        instance_type=args.instance_type,
        subnet_ids=parse_ids(args.subnet_ids),
        security_group_ids=parse_ids(args.security_group_ids),
        **stack_choices,
    )


def _ec2_summary(setup: Ec2Setup, conn_id: str) -> Summary:
    arguments, policies = setup.operator_arguments(conn_id), setup.policies_to_attach()
    return _summary(setup, "ec2", conn_id, "Ec2EphemeralOperator", arguments, policies, setup.notes())


@_command
def ec2_provision(args: argparse.Namespace, prompter: Prompter, output: Output) -> None:
    names, access = _open(args, prompter)
    options = _ec2_options(args, os_user=args.os_user, archive_bucket=args.archive_bucket or "")
    if not options.ami_id and prompter.interactive:
        ami = prompter.ask(
            "AMI id for the task instances (Docker, SSM agent, ec2-instance-connect); Enter to add it later",
            flag="--ami-id",
            why="",
            default="-",
        )
        if ami != "-":
            options = Ec2Options(**{**options.__dict__, "ami_id": ami})
    setup = Ec2Setup(names, access, options)
    setup.prepare(resolve_network(access.client("ec2"), options.subnet_ids, prompter))
    plan.provision(setup.needed(), names.name, prompter, output.report, _where(access))
    output.finish(_ec2_summary(setup, args.task_conn_id))


@_command
def ec2_show(args: argparse.Namespace, prompter: Prompter, output: Output) -> None:
    names, access = _open(args, prompter)
    setup = Ec2Setup(names, access, _ec2_options(args))
    outcomes = plan.show(setup.every_resource(), setup.needed, names.name, output.report)
    complete = all(o.state == "exists" for o in outcomes) and bool(outcomes)
    if not complete:
        output.say(f"The set-up {names.name!r} is not complete in {_where(access)}: run provision.")
        output.finish(None)
        return
    # The stack remembers the choices provision made; the subnet is found again as provision found it.
    stack_choices = setup.stack.parameters_found
    setup.options = _ec2_options(
        args, os_user=stack_choices.get("OsUser", "ec2-user"), archive_bucket=stack_choices.get("ArchiveBucket", "")
    )
    try:
        setup.network = resolve_network(access.client("ec2"), setup.options.subnet_ids, Prompter(interactive=False))
    except SetupError:
        setup.network = None
    output.finish(_ec2_summary(setup, args.task_conn_id))


@_command
def ec2_cleanup(args: argparse.Namespace, prompter: Prompter, output: Output) -> None:
    names, access = _open(args, prompter)
    setup = Ec2Setup(names, access)
    setup.stack.detach_policies = args.detach_policies
    outcomes = plan.cleanup(setup.every_resource(), names.name, prompter, output.report, _where(access))
    if not outcomes:
        output.say(f"Nothing of set-up {names.name!r} in {_where(access)}.")
    output.finish(None)
