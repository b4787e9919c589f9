"""Fixtures for the EC2 ephemeral tests: moto in server mode (the Batch tests' server and helpers),
the stand-in programs, and instances that "boot" by running their user-data on this host."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import cluster
from tests.integration.batch.conftest import moto_aws  # noqa: F401  (one moto server per session)
from tests.integration.batch.moto_batch import MotoAws
from tests.integration.ec2.fake_ec2 import (
    SSH_USER,
    FakeInstances,
    StandIns,
    ensure_ssh_user,
    remove_scratch,
    scratch_dir,
)

CONN_ID = "aws_ec2"
AMI = "ami-12c6146b"


@pytest.fixture(scope="session")
def local_sshd() -> None:
    """The test cluster's sshd on 127.0.0.1:2222 (started if needed, never stopped)."""
    cluster.bring_up()
    ensure_ssh_user()


@pytest.fixture(scope="session")
def fake_instances(moto_aws: MotoAws, local_sshd: None) -> Iterator[FakeInstances]:  # noqa: F811
    root = scratch_dir()
    fake = FakeInstances(StandIns.create(root))
    installing = fake.install()
    next(installing)
    try:
        yield fake
    finally:
        installing.close()
        remove_scratch(root)


@pytest.fixture
def stand_ins(fake_instances: FakeInstances, monkeypatch: pytest.MonkeyPatch) -> StandIns:
    """The stand-in ``aws`` and ``session-manager-plugin`` first on PATH for this test."""
    monkeypatch.setenv("PATH", fake_instances.stand_ins.path_with_stand_ins())
    fake_instances.boot = True
    fake_instances.launch_error = None
    fake_instances.stay_pending = None
    fake_instances.tunnel_fault = None
    fake_instances.refuse_keys.clear()
    return fake_instances.stand_ins


@pytest.fixture
def work_dir() -> Iterator[Path]:
    path = scratch_dir()
    yield path
    remove_scratch(path)


def ec2_extra(work_dir: Path, **overrides: object) -> dict[str, object]:
    """The ``ec2`` block of the test connection: the local sshd's user stands for ec2-user."""
    return {
        "ami_id": AMI,
        "instance_types": {"default": "t3.micro", "big": "m5.large"},
        "os_user": SSH_USER,
        "work_dir": str(work_dir),
        "tag_prefix": "airflow-hpc-test",
        **overrides,
    }


@pytest.fixture
def aws_ec2(
    moto_aws: MotoAws,  # noqa: F811
    stand_ins: StandIns,
    work_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> MotoAws:
    """The ``aws_ec2`` Airflow connection (type aws, endpoint_url -> moto, ``ec2`` extra -> test dirs)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto_aws.connection_uri(ec2=ec2_extra(work_dir)))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_aws
