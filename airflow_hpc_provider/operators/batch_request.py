"""What a Batch task submits, decided when it starts: its job definition, its git commit, its script.

:class:`~airflow_hpc_provider.operators.batch.BatchRevisionOperator` calls these once per try,
after the adoption check (an adopted job needs none of them) and before SubmitJob.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_hpc_provider.dialects import batch
from airflow_hpc_provider.dialects.batch import GitCheckout
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.hooks.batch import BatchHook, ResolvedDefinition
from airflow_hpc_provider.jobs import JobKey

_SHA = re.compile(r"^[0-9a-f]{40}$")
# Images warned about in locked mode, per process: "warn once", not once per task.
_warned_images: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class ContainerCommand:
    """The container's command, the environment it adds to the task's ``env``, and what the log shows."""

    command: tuple[str, ...]
    env: Mapping[str, str]
    for_log: str


@dataclass(frozen=True)
class DefinitionChoice:
    """How the task names its job definition (the operator's ``job_definition*`` and role arguments)."""

    mode: str  # "locked", "revisions" or "auto" (checked by the operator)
    job_definition: str | None
    image: str | None
    strict_image: bool
    job_role_arn: str | None
    execution_role_arn: str | None
    log_group: str | None
    platform: str


def resolve_definition(hook: BatchHook, choice: DefinitionChoice, log: logging.Logger | Any) -> ResolvedDefinition:
    """The definition to submit against: found or registered (``auto``, ``revisions``) or as named (``locked``)."""
    if choice.mode == "auto":
        assert choice.image is not None  # checked in the operator's __init__
        hook.check_roles({"job_role_arn": choice.job_role_arn, "execution_role_arn": choice.execution_role_arn})
        name, body = batch.auto_body(
            choice.image,
            job_role_arn=choice.job_role_arn,
            execution_role_arn=choice.execution_role_arn,
            log_group=choice.log_group,
            platform=choice.platform,
        )
        return hook.ensure_definition(name, body)
    assert choice.job_definition is not None
    if choice.mode == "revisions":
        assert choice.image is not None
        return hook.revision_for_image(choice.job_definition, choice.image)
    resolved = hook.locked(choice.job_definition)
    if choice.image and resolved.image and choice.image != resolved.image:
        message = (
            f"job_definition_mode='locked': {resolved.name}:{resolved.revision} runs {resolved.image}, "
            f"not {choice.image}; AWS Batch cannot override an image at submission, so the registered "
            "image runs. Use job_definition_mode='revisions' to run the task's image"
        )
        if choice.strict_image:
            raise JobSpecError(message)
        if (resolved.arn, choice.image) not in _warned_images:
            _warned_images.add((resolved.arn, choice.image))
            log.warning("%s", message)
    return resolved


def git_checkout(git: Mapping[str, str] | None) -> GitCheckout | None:
    """The commit the job checks out: ``git["ref"]`` resolved now, unless it is a full SHA already."""
    if git is None:
        return None
    repo, ref = git["repo"], git.get("ref", "HEAD")
    path = git.get("path", "/tmp/airflow-hpc-src")
    if _SHA.match(ref):
        return GitCheckout(repo=repo, sha=ref, path=path)
    # Resolved here, when the task starts, so every attempt and child runs the same commit.
    result = subprocess.run(["git", "ls-remote", "--", repo, ref], capture_output=True, text=True, timeout=60)
    shas = [line.split("\t", 1)[0] for line in result.stdout.splitlines() if "\t" in line]
    if result.returncode != 0 or not shas:
        raise JobSpecError(f"git: cannot resolve {ref!r} in {repo}: {result.stderr.strip() or 'no such ref'}")
    return GitCheckout(repo=repo, sha=shas[0], path=path)


# What a container's overrides hold besides command and env: resources, a few dozen characters
# (the budget's margin covers them).
NO_RESOURCES = batch.ContainerRequest()
# What the bootstrap that fetches an offloaded script takes of the overrides, at most.
BOOTSTRAP_ROOM = "b" * 512


@dataclass(frozen=True)
class ScriptStore:
    """Where a script too large for SubmitJob goes (the operator's ``script_*`` arguments)."""

    bucket: str | None
    prefix: str
    offload_threshold_bytes: int


def script_or_bootstrap(
    hook: BatchHook, key: JobKey, script: str, store: ScriptStore, log: logging.Logger | Any, env: Mapping[str, str]
) -> str:
    """``script`` itself when SubmitJob and the container's overrides take it (with ``env``), else a
    bootstrap that fetches it from S3 and checks it."""
    size = len(script.encode())
    # Past what the container's overrides take, the script goes to S3 too, unless the env values
    # alone are too large: moving the script would not help, and the request's check says so.
    crowded = not batch.fits_overrides(("bash", "-c", script), env, NO_RESOURCES) and batch.fits_overrides(
        ("bash", "-c", BOOTSTRAP_ROOM), env, NO_RESOURCES
    )
    if size <= store.offload_threshold_bytes and not crowded:
        return script
    if not store.bucket:
        raise JobSpecError(
            f"the script is {size} bytes: with the env values, more than a job's container overrides take "
            f"({batch.OVERRIDES_LIMIT} characters) or more than "
            f"offload_threshold_bytes={store.offload_threshold_bytes}; give script_bucket= so it goes to S3"
        )
    stored = hook.store_script(store.bucket, f"{store.prefix}/{key.task_digest}/try{key.try_number}.sh", script)
    log.info("Script (%d bytes) stored at %s (encryption: %s)", len(script), stored.uri, stored.encryption or "none")
    return batch.render_bootstrap(stored.uri, stored.sha256)
