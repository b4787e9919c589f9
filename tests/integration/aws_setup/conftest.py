"""Fixtures for the AWS set-up tests: the session's moto server (shared with the Batch and EC2 tests),
with AWS's managed policies loaded as AWS has them, and an ``aws`` connection holding a secret."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import botocore.session
import pytest
from moto.batch.models import BatchBackend
from moto.core.config import default_user_config
from moto.iam.models import ManagedPolicy, iam_backends

from airflow_hpc_provider.setup.__main__ import main
from tests.integration.batch.conftest import moto_aws  # noqa: F401  (one moto server per session)
from tests.integration.batch.moto_batch import ACCOUNT, REGION, MotoAws

CONN_ID = "aws_setup"
# The set-up connection's secret: it must never appear in anything the command prints.
SECRET = f"setup-secret-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def one_botocore_loader() -> Iterator[None]:
    """Every command here makes a boto3 session, and each session parses botocore's service models
    (EC2's alone is megabytes of JSON) again: about a second per command on a busy host. The commands
    of these tests share one loader, as one long-lived process would; each still builds its own session.
    """
    shared = functools.cache(botocore.session.create_loader)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader", shared)
        yield


@pytest.fixture(scope="session")
def setup_aws(moto_aws: MotoAws, one_botocore_loader: None) -> MotoAws:  # noqa: F811
    """moto with the AWS-managed policies (AWSBatchServiceRole, ...) that every AWS account has.

    moto loads them only when asked (its config ``iam.load_aws_managed_policies``), at the creation of
    the IAM backend, which other tests of the session may have made already: load them into it too.
    """
    _managed_policies_follow_their_stack()
    _resize_compute_environments()
    default_user_config.setdefault("iam", {})["load_aws_managed_policies"] = True
    backend = iam_backends[ACCOUNT]["global"]
    if not backend.aws_managed_policies:
        backend.aws_managed_policies = backend._init_aws_policies()
        backend.managed_policies.update({policy.arn: policy for policy in backend.aws_managed_policies})
    return moto_aws


def _managed_policies_follow_their_stack() -> None:
    """moto 5.2's CloudFormation neither updates nor deletes a stack's ``AWS::IAM::ManagedPolicy``: an
    update that changes a policy leaves the stack without it (its outputs vanish), a deletion keeps it.
    AWS gives the policy a new default version in place, and deletes it with the stack (refusing while
    it is still attached). Give moto's model both, so that provision's stack update and "cleanup leaves
    nothing" are judged as AWS would.
    """
    if hasattr(ManagedPolicy, "delete"):
        return

    def delete(policy: ManagedPolicy, account_id: str, region_name: str) -> None:
        if policy.attachment_count > 0:
            raise RuntimeError(f"DeleteConflict: {policy.arn} is attached to {policy.attachment_count} entities")
        policy.backend.delete_policy(policy.arn)

    def update_from_cloudformation_json(
        cls: type[ManagedPolicy],
        original_resource: ManagedPolicy,
        new_resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
    ) -> ManagedPolicy:
        document = json.dumps(cloudformation_json["Properties"]["PolicyDocument"])
        backend = original_resource.backend
        backend.create_policy_version(original_resource.arn, document, set_as_default=True)
        for version in list(original_resource.versions):
            if not version.is_default:
                backend.delete_policy_version(original_resource.arn, version.version_id)
        return original_resource

    ManagedPolicy.delete = delete  # type: ignore[attr-defined]
    ManagedPolicy.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)  # type: ignore[assignment]


def _resize_compute_environments() -> None:
    """moto 5.2's UpdateComputeEnvironment ignores ``computeResources`` (not implemented there); AWS applies the
    vCPU limits. Apply them, so that provision's update of ``--max-vcpus`` is seen as AWS would show it."""
    update = BatchBackend.update_compute_environment
    if getattr(update, "applies_vcpus", False):
        return

    def applying(
        backend: BatchBackend, compute_environment_name: str, state: Any, compute_resources: Any, service_role: Any
    ) -> tuple[str, str]:
        result = update(backend, compute_environment_name, state, compute_resources, service_role)
        environment = backend.get_compute_environment(compute_environment_name)
        for key in ("minvCpus", "maxvCpus", "desiredvCpus"):
            if environment is not None and compute_resources and key in compute_resources:
                environment.compute_resources[key] = compute_resources[key]
        return result

    applying.applies_vcpus = True  # type: ignore[attr-defined]
    BatchBackend.update_compute_environment = applying  # type: ignore[method-assign,assignment]


def setup_connection_uri(aws: MotoAws) -> str:
    return json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": SECRET,
            "extra": {"region_name": REGION, "endpoint_url": aws.url},
        }
    )


@pytest.fixture
def aws(setup_aws: MotoAws, monkeypatch: pytest.MonkeyPatch) -> MotoAws:
    """The ``aws_setup`` connection (endpoint_url -> moto) the commands are given with --aws-conn-id."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", setup_connection_uri(setup_aws))
    return setup_aws


@pytest.fixture
def name() -> str:
    """A set-up name of this test's own (the moto server is shared by the whole session)."""
    return f"t{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    @property
    def document(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(self.out)
        return loaded


def run_setup(*argv: str, answers: str | None = None) -> Ran:
    """``python -m airflow_hpc_provider.setup <argv>`` in this process (moto runs here too).

    ``answers``: what the user types (interactive mode); without it, stdin is empty.
    """
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr("sys.stdin", io.StringIO(answers or ""))
        try:
            main([*argv])
        except SystemExit as exit_:
            code = int(exit_.code) if isinstance(exit_.code, int) else 1
    return Ran(code, out.getvalue(), err.getvalue())


def batch(*argv: str, answers: str | None = None) -> Ran:
    return run_setup("batch", *argv, answers=answers)


def ec2(*argv: str, answers: str | None = None) -> Ran:
    return run_setup("ec2", *argv, answers=answers)


@pytest.fixture
def cleanup_after(aws: MotoAws, name: str) -> Iterator[None]:
    """Whatever a test leaves of its set-up is removed (a failing test must not leak into others)."""
    yield
    batch(
        "cleanup", "--name", name, "--aws-conn-id", CONN_ID, "--non-interactive", "--detach-policies", "--empty-bucket"
    )
