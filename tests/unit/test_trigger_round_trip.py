"""Every trigger of the package survives the trip the triggerer makes it take: ``serialize()`` is
stored as JSON in the database, and the triggerer rebuilds the trigger from the class path and the
keyword arguments. A field left out of ``serialize()`` would be lost on every deferral; a value that
does not survive JSON would break the rebuild. The triggers are discovered, so a new one is covered
the day it is written.
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Any

import pytest
from airflow.triggers.base import BaseTrigger

from tests.unit.package_modules import defined_classes


def constructor_parameters(cls: type[BaseTrigger]) -> list[str]:
    """Every keyword a trigger's constructor takes, following ``**kwargs`` up to the class it feeds."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is BaseTrigger or "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        names += [p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


# One value per parameter name, none of them a default, so a field serialize() forgets shows up.
SAMPLES: dict[str, Any] = {
    "conn_id": "cluster_conn",
    "slurm_conn_id": "slurm_conn",
    "aws_conn_id": "aws_conn",
    "job_id": "4242",
    "tenant_id": "77:0123456789abcdef:2",
    "instance_id": "i-0123456789abcdef0",
    "log_path": 'airflow-hpc/logs/it\'s a "log".out',
    "cursor_path": "airflow-hpc/logs/job.cursor",
    "log_dir": "/scratch/$USER/airflow hpc",
    "run_dir": "/var/lib/airflow-hpc/run",
    "region_name": "eu-west-3",
    "poll_interval": 3.5,
    "deadline": 1_900_000_000.25,
    "terminate_on_kill": False,
    "include_children": True,
    "dag_id": "a_dag",
    "task_id": "a_task",
    "run_id": "manual__2026-01-01T00:00:00+00:00",
    "map_index": 3,
    "flavour": "torque",
    "os_user": "ubuntu",
    "tunnel": "ssm-session",
    "host_key_check": "off",
    "host_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOk1", "ecdsa-sha2-nistp256 AAAAE2VjZHNh"],
    "unreachable_timeout": 120.0,
    "archive_path": "/archive/job.log",
    "archive_s3_uri": "s3://bucket/prefix/job.log",
    "element": {
        "head": "#!/bin/bash\n#SBATCH --mem=64M\n",
        "job_name": "a_dag.a_task",
        "log_dir": "/scratch/$USER/airflow hpc",
        "shared_env": [["SITE", "hpc-a"]],
        "env": [["GREETING", 'it\'s "quoted"']],
        "working_dir": None,
        "throttle": 4,
        "window_s": 2.5,
        "task_digest": "0123456789abcdef0123",
        "try_number": 2,
        "command": "echo 'one element'",
        "map_index": 17,
        "siblings": "a_dag\x1frun\x1fa_task",
        "expected": 20,
    },
}

TRIGGERS: list[type[BaseTrigger]] = defined_classes(BaseTrigger)


def test_the_discovery_finds_the_triggers_of_every_backend() -> None:
    names = {cls.__name__ for cls in TRIGGERS}
    assert {"SlurmJobTrigger", "PbsJobTrigger", "SlurmTenantTrigger", "BatchJobTrigger", "Ec2InstanceTrigger"} <= names


@pytest.mark.parametrize("cls", TRIGGERS, ids=lambda cls: cls.__qualname__)
def test_every_trigger_is_rebuilt_from_its_serialized_json_with_every_field_intact(cls: type[BaseTrigger]) -> None:
    parameters = constructor_parameters(cls)
    missing = [name for name in parameters if name not in SAMPLES]
    assert missing == [], f"{cls.__qualname__} takes {missing}: add a non-default sample value to SAMPLES"
    given = {name: SAMPLES[name] for name in parameters}

    classpath, kwargs = cls(**given).serialize()
    stored = json.loads(json.dumps({"classpath": classpath, "kwargs": kwargs}))

    module_name, _, class_name = stored["classpath"].rpartition(".")
    rebuilt_cls = getattr(importlib.import_module(module_name), class_name)
    assert rebuilt_cls is cls
    assert stored["kwargs"] == given, "serialize() must hand back every constructor argument, unchanged"
    rebuilt = rebuilt_cls(**stored["kwargs"])
    assert json.loads(json.dumps(rebuilt.serialize())) == [stored["classpath"], stored["kwargs"]]
