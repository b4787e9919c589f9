"""Provider metadata for Airflow: what ``airflow providers list`` shows and the admin UI's connection forms.

The Airflow 3 UI builds custom connection fields only from ``conn-fields`` here (a hook's
``get_connection_form_widgets`` is not used by it). Every field lands in the connection's extra.

The AWS parts (Batch, EC2) are listed only where the ``aws`` extra is installed: a Slurm-only
installation has no amazon provider, and Airflow would log an import error for every AWS module
it was told about.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from airflow_hpc_provider import __version__

# Also [project.urls] Documentation in pyproject.toml, which Airflow's Providers page links to;
# `airflow providers list` shows only the description, so the description names it too.
DOCS_URL = "https://airflow-hpc-provider.readthedocs.io/"


def _text(label: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {"type": ["string", "null"], **schema}}


def _flag(label: str, description: str, default: bool) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {"type": ["boolean", "null"], "default": default}}


def _number(label: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {"type": ["number", "null"], **schema}}


# What every SSH-reached cluster connection (slurm, pbs) offers.
SSH_FIELDS: dict[str, Any] = {
    "key_file": _text("Private key file", "Path to the private key on the Airflow hosts."),
    # Multi-line, so a pasted key keeps its line breaks (a one-line input drops them). Airflow masks
    # it by its name (private_key) in logs and API answers; the edit form shows it as ***.
    "private_key": _text(
        "Private key (pasted)",
        "The private key itself, in OpenSSH or PEM form, pasted with its line breaks. Airflow masks it once saved.",
        format="multiline",
    ),
    "private_key_passphrase": _text("Key passphrase", "Passphrase of the private key.", format="password"),
    "certificate": _text("SSH certificate", "An OpenSSH certificate for the key: the text or a file path."),
    "known_hosts": _text(
        "Known hosts",
        "known_hosts lines for the login node, or a path to a known_hosts file. "
        "Empty: ~/.ssh/known_hosts of the Airflow user.",
        format="multiline",
    ),
    "host_key": _text("Host key", "The login node's public host key, e.g. 'ssh-ed25519 AAAA...'."),
    "no_host_key_check": _flag(
        "Skip host key check (unsafe)",
        "Connect without verifying the login node's identity. Off by default; only for throw-away test hosts.",
        False,
    ),
    "jump_host": _text("Jump host", "Reach the login node through this host: [user@]host[:port], same key."),
    "connect_timeout": _number("Connect timeout (s)", "Seconds to wait for the SSH handshake.", default=30),
    "login_shell": _flag(
        "Login shell", "Run submissions and jobs in a login shell (bash -l), e.g. for 'module'.", False
    ),
    "max_sessions": _number(
        "Max SSH sessions",
        "Concurrent SSH channels per connection; keep below the login node's MaxSessions.",
        default=8,
        minimum=1,
    ),
}

CLUSTER_FIELDS: dict[str, Any] = {
    "account": _text("Default account", "Account charged when a task names none."),
    "max_concurrent_jobs": _number(
        "Max concurrent jobs",
        "Submit no more than this many of this provider's jobs at once for this user; further tasks wait "
        "(deferred) and try again.",
        minimum=1,
    ),
    # No default here: the form would save it into every connection, hiding [hpc] remote_log_dir.
    "log_dir": _text(
        "Job log directory",
        "Where job output is written on the cluster; relative to the login home. "
        "Empty: [hpc] remote_log_dir of the Airflow configuration (.airflow-hpc/logs).",
    ),
    "poll_interval": _number(
        "Poll interval (s)",
        "Seconds between status queries for this cluster. Empty: [hpc] default_poll_interval (10).",
        minimum=1,
    ),
}

# Layered environment rules (docs/env_rules.rst), JSON text in a multi-line field: the same keys
# hold JSON objects when the connection comes from a URI's JSON form or a secrets backend.
ENV_RULE_FIELDS: dict[str, Any] = {
    "env_rules": _text(
        "Environment rules",
        'JSON list of rules for every job on this cluster, e.g. [{"name": "PATH", "prepend": "/opt/site/bin"}, '
        '{"init": ["module load gcc"]}]. Values reach jobs through their environment, never their script.',
        format="multiline",
    ),
    "env_groups": _text(
        "Environment rule groups",
        'JSON object of named rule lists a task picks with env_groups=, e.g. {"cuda": [{"init": '
        '["module load cuda"]}, {"name": "CUDA_CACHE_PATH", "set": "/scratch/cuda"}]}.',
        format="multiline",
    ),
}

HIDDEN = ["schema", "extra"]
# How the form of every SSH-reached cluster connection (slurm, pbs, sge) names Airflow's own fields.
LOGIN_NODE_FORM: dict[str, Any] = {
    "hidden-fields": HIDDEN,
    "relabeling": {"host": "Login node", "login": "User", "password": "Password (if no key)"},
    "placeholders": {"host": "login.cluster.example.org", "port": "22"},
}


def _option(description: str, kind: str, default: str | None, example: str | None = None) -> dict[str, Any]:
    return {"description": description, "version_added": "0.2.0", "type": kind, "example": example, "default": default}


# [hpc] in airflow.cfg (AIRFLOW__HPC__...): deployment-wide defaults, read by airflow_hpc_provider.config.
CONFIG: dict[str, Any] = {
    "hpc": {
        "description": "Defaults for the HPC provider's operators. A task's argument wins over a connection's "
        "extra, which wins over these.",
        "options": {
            "default_poll_interval": _option(
                "Seconds between status polls of a job when neither the task nor its connection says. "
                "One poll covers every job on one cluster.",
                "float",
                "10",
                "30",
            ),
            "remote_log_dir": _option(
                "Where job output is written on a cluster whose connection names no log directory; "
                "relative paths start at the login user's home.",
                "string",
                ".airflow-hpc/logs",
                "/scratch/airflow/logs",
            ),
            "default_deferrable": _option(
                "Wait for jobs in the triggerer (True) or on the worker (False) when a task does not say. "
                "Set False for a deployment without a triggerer. Airflow's own "
                "[operators] default_deferrable counts only when set through its environment variable "
                "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE.",
                "boolean",
                "True",
                "False",
            ),
            "array_window": _option(
                "The longest an instance of a mapped Slurm task waits in the triggerer for its siblings before "
                "it is submitted as an element of a job array; it ends early once every instance is waiting.",
                "float",
                "10",
                "30",
            ),
        },
    }
}


def aws_extra_installed() -> bool:
    """True when ``airflow-hpc-provider[aws]`` (the amazon provider and boto3) is installed here."""
    return all(importlib.util.find_spec(name) is not None for name in ("boto3", "airflow.providers.amazon"))


def _integrations(with_aws: bool) -> list[dict[str, Any]]:
    found = [
        {"integration-name": "Slurm", "external-doc-url": "https://slurm.schedmd.com/", "tags": ["software"]},
        {"integration-name": "PBS", "external-doc-url": "https://www.openpbs.org/", "tags": ["software"]},
        {
            "integration-name": "Grid Engine",
            "external-doc-url": "https://gridscheduler.sourceforge.net/",
            "tags": ["software"],
        },
    ]
    if with_aws:
        found += [
            {"integration-name": "AWS Batch", "external-doc-url": "https://aws.amazon.com/batch/", "tags": ["aws"]},
            {"integration-name": "Amazon EC2", "external-doc-url": "https://aws.amazon.com/ec2/", "tags": ["aws"]},
        ]
    return found


def _task_decorators(with_aws: bool) -> list[dict[str, str]]:
    """``@task.slurm``, ``@task.pbs``, ``@task.sge`` (and ``@task.batch`` with the aws extra): Python
    functions as jobs."""
    decorators = {
        "slurm": "airflow_hpc_provider.decorators.slurm.slurm_task",
        "pbs": "airflow_hpc_provider.decorators.pbs.pbs_task",
        "sge": "airflow_hpc_provider.decorators.sge.sge_task",
    }
    if with_aws:
        decorators["batch"] = "airflow_hpc_provider.decorators.batch.batch_task"
    return [{"name": name, "class-name": path} for name, path in decorators.items()]


def _modules(kind: str, with_aws: bool) -> list[dict[str, Any]]:
    """Which modules hold the operators, hooks or triggers of each integration."""
    table: dict[str, dict[str, list[str]]] = {
        "operators": {
            "Slurm": [
                "airflow_hpc_provider.operators.slurm",
                "airflow_hpc_provider.operators.slurm_tenant",
                "airflow_hpc_provider.operators.slurm_allocation",
            ],
            "PBS": ["airflow_hpc_provider.operators.pbs"],
            "Grid Engine": ["airflow_hpc_provider.operators.sge"],
            "AWS Batch": ["airflow_hpc_provider.operators.batch"],
            "Amazon EC2": ["airflow_hpc_provider.operators.ec2", "airflow_hpc_provider.operators.ec2_reaper"],
        },
        "hooks": {
            "Slurm": ["airflow_hpc_provider.hooks.slurm", "airflow_hpc_provider.hooks.slurm_tenant"],
            "PBS": ["airflow_hpc_provider.hooks.pbs"],
            "Grid Engine": ["airflow_hpc_provider.hooks.sge"],
            "AWS Batch": ["airflow_hpc_provider.hooks.batch"],
            "Amazon EC2": ["airflow_hpc_provider.hooks.ec2", "airflow_hpc_provider.hooks.ssm"],
        },
        "triggers": {
            "Slurm": [
                "airflow_hpc_provider.triggers.slurm",
                "airflow_hpc_provider.triggers.slurm_array",
                "airflow_hpc_provider.triggers.slurm_tenant",
            ],
            "PBS": ["airflow_hpc_provider.triggers.pbs"],
            "Grid Engine": ["airflow_hpc_provider.triggers.sge", "airflow_hpc_provider.triggers.sge_array"],
            "AWS Batch": ["airflow_hpc_provider.triggers.batch"],
            "Amazon EC2": ["airflow_hpc_provider.triggers.ec2"],
        },
    }
    names = [integration["integration-name"] for integration in _integrations(with_aws)]
    return [{"integration-name": name, "python-modules": table[kind][name]} for name in names]


def get_provider_info() -> dict[str, Any]:
    with_aws = aws_extra_installed()
    return {
        "package-name": "airflow-hpc-provider",
        "name": "HPC (Slurm, PBS, Grid Engine, AWS Batch, EC2)",
        "description": "Run Airflow tasks as jobs on HPC clusters and in AWS, watched without holding worker slots. "
        f"Docs: {DOCS_URL}",
        "versions": [__version__],
        "integrations": _integrations(with_aws),
        "operators": _modules("operators", with_aws),
        "hooks": _modules("hooks", with_aws),
        "triggers": _modules("triggers", with_aws),
        "config": CONFIG,
        "task-decorators": _task_decorators(with_aws),
        # `airflow hpc-aws-setup {batch,ec2} {provision,show,cleanup}` (docs/aws_setup.rst).
        "cli": ["airflow_hpc_provider.setup.cli.get_setup_cli_commands"] if with_aws else [],
        # AWS Batch and EC2 use the amazon provider's standard "aws" connection type; no new type here
        # (EC2 defaults live in its extra under "ec2", see docs/connections/aws_ec2.rst).
        "extra-links": (
            ["airflow_hpc_provider.links.batch.BatchJobLink", "airflow_hpc_provider.links.batch.BatchLogLink"]
            if with_aws
            else []
        ),
        "connection-types": [
            {
                "connection-type": "slurm",
                "hook-class-name": "airflow_hpc_provider.hooks.slurm.SlurmHook",
                "hook-name": "Slurm (over SSH)",
                "conn-fields": {
                    **SSH_FIELDS,
                    "partition": _text("Default partition", "Partition used when a task names none."),
                    **CLUSTER_FIELDS,
                    **ENV_RULE_FIELDS,
                },
                "ui-field-behaviour": LOGIN_NODE_FORM,
            },
            {
                "connection-type": "pbs",
                "hook-class-name": "airflow_hpc_provider.hooks.pbs.PbsHook",
                "hook-name": "PBS / Torque (over SSH)",
                "conn-fields": {
                    **SSH_FIELDS,
                    "flavour": {
                        "label": "Flavour",
                        "description": "pbs_pro (PBS Pro, OpenPBS) or torque; empty: ask the login node.",
                        "schema": {"type": ["string", "null"], "enum": ["", "pbs_pro", "torque"], "default": ""},
                    },
                    "queue": _text("Default queue", "Queue used when a task names none (overrides a Slurm partition)."),
                    **{name: field for name, field in CLUSTER_FIELDS.items() if name != "max_concurrent_jobs"},
                    **ENV_RULE_FIELDS,
                },
                "ui-field-behaviour": LOGIN_NODE_FORM,
            },
            {
                "connection-type": "sge",
                "hook-class-name": "airflow_hpc_provider.hooks.sge.SgeHook",
                "hook-name": "Grid Engine (over SSH)",
                "conn-fields": {
                    **SSH_FIELDS,
                    "queue": _text("Default queue", "Cluster queue (-q) used when a task names none."),
                    "project": _text("Default project", "Project (-P) charged when a task names no account."),
                    "parallel_environment": _text(
                        "Parallel environment", "The site's parallel environment for tasks with cpus > 1 (often smp)."
                    ),
                    **{name: field for name, field in CLUSTER_FIELDS.items() if name in ("log_dir", "poll_interval")},
                    **ENV_RULE_FIELDS,
                },
                "ui-field-behaviour": LOGIN_NODE_FORM,
            },
        ],
    }
