"""AWS Batch as pure functions: requests to build, answers to read. No boto3 here, no I/O.

The hook (``hooks/batch.py``) sends what these functions build; the poller reads DescribeJobs
answers through :func:`status_of`. Keeping the shapes here lets unit tests check them without AWS.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow_hpc_provider.dialects.base import Observation
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobState, JobStatus

NAME = "AWS Batch"
DESCRIBE_BATCH = 100  # DescribeJobs takes at most 100 ids per call
LOG_STREAMS_PER_CALL = 100  # FilterLogEvents takes at most 100 stream names
DEFAULT_LOG_GROUP = "/aws/batch/job"
KEY_TAG = "airflow-hpc-key"
CONTENT_TAG = "airflow-hpc-content"
# Set on a job once its outcome belongs to a try: a trigger watched it, a try read its end, or we
# terminated it. A later try never adopts a job carrying it (see ``hooks/batch.py``).
CLAIM_TAG = "airflow-hpc-claimed"
CLAIM_BY_TRIGGER = "trigger"
CLAIM_BY_OUTCOME = "outcome"
CLAIM_BY_TERMINATE = "terminated"
MIN_ATTEMPT_DURATION_S = 60
# SubmitJob refuses requests over 30 KiB; what is left after tags, names and env is for the script.
DEFAULT_OFFLOAD_THRESHOLD_BYTES = 20 * 1024
# ECS fails a container whose overrides (command, environment, resources, as JSON) pass 8,192
# characters: the job ends FAILED with "Container Overrides length must be at most 8192". Batch
# adds its own variables (AWS_BATCH_JOB_ID, AWS_BATCH_JQ_NAME, AWS_BATCH_CE_NAME, the attempt, an
# array's index: about 300 characters as JSON), so ours keep 512 below. A script or payload goes
# to S3 before the overrides would pass that.
OVERRIDES_LIMIT = 8192
OVERRIDES_BUDGET = 7680

_STATES = {
    "SUBMITTED": JobState.PENDING,
    "PENDING": JobState.PENDING,
    "RUNNABLE": JobState.PENDING,
    "STARTING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "SUCCEEDED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
}
LIVE_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
FINAL_STATES = ("SUCCEEDED", "FAILED")

# Fields of a job definition that a new revision keeps from its template (RegisterJobDefinition
# takes them as they come back from DescribeJobDefinitions).
TEMPLATE_FIELDS = (
    "type",
    "parameters",
    "schedulingPriority",
    "retryStrategy",
    "propagateTags",
    "timeout",
    "tags",
    "platformCapabilities",
    "nodeProperties",
    "eksProperties",
    "ecsProperties",
    "containerProperties",
)

_JOB_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_ROLE_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:iam::(\d{12}):role/.+$")
_FARGATE_VCPUS = (0.25, 0.5, 1, 2, 4, 8, 16)


# --- reading DescribeJobs -------------------------------------------------------------------------


def observe(description: Mapping[str, Any] | None) -> Observation:
    """What one DescribeJobs answer says of one job (None: DescribeJobs does not know it).

    Only SUCCEEDED and FAILED are how a Batch job ended; DescribeJobs is Batch's accounting, so
    they are final at once (there is no queue/accounting gap as on Slurm)."""
    if description is None:
        return Observation(None, final=False)
    status = status_of(description)
    return Observation(status, final=status.native_state in ("SUCCEEDED", "FAILED"))


def status_of(description: Mapping[str, Any]) -> JobStatus:
    """One DescribeJobs entry -> a :class:`JobStatus`; exit code ``None`` when Batch gives none."""
    native = str(description.get("status", "UNKNOWN"))
    state = _STATES.get(native, JobState.UNKNOWN)
    container = description.get("container") or {}
    attempts = description.get("attempts") or []
    last_attempt = (attempts[-1].get("container") or {}) if attempts else {}
    exit_code = container.get("exitCode", last_attempt.get("exitCode"))
    reason = description.get("statusReason")
    container_reason = container.get("reason") or last_attempt.get("reason")
    if state is JobState.FAILED:
        # Batch says FAILED for all of these; the shared states tell the user which it was.
        text = f"{reason or ''} {container_reason or ''}"
        if "OutOfMemory" in text:
            state = JobState.OUT_OF_MEMORY
        elif "exceeded timeout" in text or "Job attempt duration exceeded" in text:
            state = JobState.TIMEOUT
    if container_reason and container_reason != reason:
        reason = f"{reason}; {container_reason}" if reason else container_reason
    started, stopped = description.get("startedAt"), description.get("stoppedAt")
    elapsed = None
    if isinstance(started, int) and isinstance(stopped, int) and started > 0 and stopped >= started:
        elapsed = timedelta(milliseconds=stopped - started)
    return JobStatus(
        job_id=str(description["jobId"]),
        state=state,
        native_state=native,
        reason=reason,
        nodes=last_attempt.get("containerInstanceArn") if state is JobState.RUNNING else None,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        elapsed=elapsed,
    )


@dataclass(frozen=True)
class LogStream:
    """One CloudWatch stream of a job and how its lines are labelled in the task log."""

    group: str
    name: str
    label: str


def log_streams_of(description: Mapping[str, Any], *, child_index: int | None = None) -> list[LogStream]:
    """Every attempt's stream (a retried job has one per attempt), oldest first, no repeats."""
    container = description.get("container") or {}
    options = (container.get("logConfiguration") or {}).get("options") or {}
    group = str(options.get("awslogs-group") or DEFAULT_LOG_GROUP)
    names: list[str] = []
    for attempt in description.get("attempts") or []:
        name = (attempt.get("container") or {}).get("logStreamName")
        if name and name not in names:
            names.append(name)
    current = container.get("logStreamName")
    if current and current not in names:
        names.append(current)
    streams = []
    for number, name in enumerate(names, start=1):
        parts = []
        if child_index is not None:
            parts.append(f"child {child_index}")
        if len(names) > 1:
            parts.append(f"attempt {number}")
        streams.append(LogStream(group=group, name=name, label=f"[{', '.join(parts)}] " if parts else ""))
    return streams


def array_size_of(description: Mapping[str, Any]) -> int:
    size = (description.get("arrayProperties") or {}).get("size")
    return size if isinstance(size, int) else 0


# --- naming and identity --------------------------------------------------------------------------


def job_name_base(dag_id: str, task_id: str, job_name: str | None) -> str:
    """Batch job names allow letters, digits, '-' and '_' (128 at most): keep room for the key."""
    raw = job_name or f"{dag_id}-{task_id}"
    base = _JOB_NAME_CHARS.sub("-", raw).strip("-_") or "airflow"
    if not base[0].isalnum():
        base = "a" + base
    return base[:90]


def job_name_for(base: str, key: JobKey) -> str:
    return f"{base}-{key.task_digest}-t{key.try_number}"


def job_name_pattern(base: str, key: JobKey) -> str:
    """The ListJobs JOB_NAME filter that finds every try of this task instance."""
    return f"{base}-{key.task_digest}-*"


# Room for "-airflow-hpc-" and 16 hex digits within Batch's 128 characters per definition name.
REVISION_NAME_BASE_MAX = 96


def revision_definition_name(template_name: str, digest: str) -> str:
    """Where ``revisions`` mode registers a template with another image: never the template's name.

    Registering under the template's own name would make its bare name (latest ACTIVE revision)
    resolve to whatever image the last task asked for: locked tasks naming the template, other DAGs
    and console users would silently run it. A name of its own per content keeps the template's
    revisions exactly as their owner registered them, and makes finding the revision for a content
    one DescribeJobDefinitions call.
    """
    return f"{template_name[:REVISION_NAME_BASE_MAX]}-airflow-hpc-{digest[:16]}"


def content_hash(body: Mapping[str, Any]) -> str:
    """A stable digest of a job definition's content, stored as a tag to find it again."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def role_account(arn: str | None) -> str | None:
    match = _ROLE_ARN.match(arn or "")
    return match.group(1) if match else None


# --- job definitions ------------------------------------------------------------------------------


def parse_definition_ref(ref: str) -> tuple[str, int | None]:
    """``name``, ``name:3`` or an ARN -> (name, revision or None)."""
    text = ref.split(":job-definition/", 1)[1] if ":job-definition/" in ref else ref
    name, _, revision = text.partition(":")
    if not name:
        raise JobSpecError(f"job_definition={ref!r} is not a name, name:revision or job definition ARN")
    if revision and not revision.isdigit():
        raise JobSpecError(f"job_definition={ref!r}: the revision after ':' must be a number")
    return name, int(revision) if revision else None


def image_of(definition: Mapping[str, Any]) -> str | None:
    container = definition.get("containerProperties") or {}
    image = container.get("image")
    return str(image) if image else None


def revision_body(template: Mapping[str, Any], image: str) -> dict[str, Any]:
    """A new revision's RegisterJobDefinition body: the template's fields with the task's image."""
    if not template.get("containerProperties"):
        raise JobSpecError(
            f"job definition {template.get('jobDefinitionName')} has no containerProperties, so "
            "job_definition_mode='revisions' cannot swap its image; use 'locked' for multi-node or EKS definitions"
        )
    body: dict[str, Any] = {name: template[name] for name in TEMPLATE_FIELDS if template.get(name) is not None}
    body["containerProperties"] = {**template["containerProperties"], "image": image}
    tags = {k: v for k, v in (body.get("tags") or {}).items() if not k.startswith("aws:") and k != CONTENT_TAG}
    body["tags"] = tags
    return body


def auto_body(
    image: str,
    *,
    job_role_arn: str | None,
    execution_role_arn: str | None,
    log_group: str | None,
    platform: str,
) -> tuple[str, dict[str, Any]]:
    """A generic definition for tasks that name none: its name comes from what makes it differ."""
    container: dict[str, Any] = {
        "image": image,
        "command": ["bash", "-c", "echo 'this definition expects a command override'; exit 2"],
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}],
    }
    if job_role_arn:
        container["jobRoleArn"] = job_role_arn
    if execution_role_arn:
        container["executionRoleArn"] = execution_role_arn
    if log_group:
        container["logConfiguration"] = {"logDriver": "awslogs", "options": {"awslogs-group": log_group}}
    if platform == "FARGATE":
        container["networkConfiguration"] = {"assignPublicIp": "DISABLED"}
    body: dict[str, Any] = {
        "type": "container",
        "containerProperties": container,
        "platformCapabilities": [platform],
        "tags": {},
    }
    identity = content_hash(
        {"image": image, "roles": [job_role_arn, execution_role_arn], "log": log_group, platform: 1}
    )
    return f"airflow-hpc-{identity[:16]}", body


# --- the script and what travels with it ----------------------------------------------------------


@dataclass(frozen=True)
class GitCheckout:
    """Clone ``repo`` into ``path`` and check out ``sha`` (resolved on the worker when the task starts)."""

    repo: str
    sha: str
    path: str = "/tmp/airflow-hpc-src"


def render_script(command: str, env_names: Sequence[str], git: GitCheckout | None) -> str:
    """What ``bash -c`` runs. Env values never appear: the header only names the variables."""
    lines = ["# rendered by airflow-hpc-provider"]
    if env_names:
        lines.append(f"# environment from the Batch API: {' '.join(env_names)}")
    if git is not None:
        repo, path, sha = (shlex.quote(value) for value in (git.repo, git.path, git.sha))
        lines += [
            "set -e",
            f"git clone --quiet --no-checkout {repo} {path}",
            f"cd {path}",
            f"git -c advice.detachedHead=false checkout --quiet {sha}",
            "set +e",
        ]
    lines.append(command)
    return "\n".join(lines) + "\n"


def render_bootstrap(s3_uri: str, sha256: str) -> str:
    """The short script that fetches an offloaded script, checks it is the one we wrote, and runs it."""
    uri = shlex.quote(s3_uri)
    return (
        'script="$(mktemp)"\n'
        f'aws s3 cp --quiet {uri} "$script"\n'
        f'echo {shlex.quote(sha256)}"  $script" | sha256sum -c --quiet -\n'
        'exec bash "$script"\n'
    )


@dataclass(frozen=True)
class ContainerRequest:
    """What the task asks of one container: all ``None`` means "what the job definition says"."""

    vcpus: float | None = None
    memory_mb: int | None = None
    gpus: int | None = None


def container_overrides(command: Sequence[str], env: Mapping[str, str], request: ContainerRequest) -> dict[str, Any]:
    overrides: dict[str, Any] = {"command": list(command)}
    requirements = []
    if request.vcpus is not None:
        value = int(request.vcpus) if float(request.vcpus).is_integer() else request.vcpus
        requirements.append({"type": "VCPU", "value": str(value)})
    if request.memory_mb is not None:
        requirements.append({"type": "MEMORY", "value": str(request.memory_mb)})
    if request.gpus is not None:
        requirements.append({"type": "GPU", "value": str(request.gpus)})
    if requirements:
        overrides["resourceRequirements"] = requirements
    if env:
        overrides["environment"] = [{"name": name, "value": value} for name, value in env.items()]
    return overrides


def overrides_length(overrides: Mapping[str, Any]) -> int:
    """The container overrides' length as ECS counts it (their JSON)."""
    return len(json.dumps(overrides, separators=(",", ":"), ensure_ascii=False))


def fits_overrides(command: Sequence[str], env: Mapping[str, str], request: ContainerRequest) -> bool:
    """Whether a container running ``command`` with ``env`` stays within :data:`OVERRIDES_BUDGET`."""
    return overrides_length(container_overrides(command, env, request)) <= OVERRIDES_BUDGET


def checked_overrides(command: Sequence[str], env: Mapping[str, str], request: ContainerRequest) -> dict[str, Any]:
    """:func:`container_overrides`, refused before SubmitJob where ECS would fail the job at start."""
    overrides = container_overrides(command, env, request)
    length = overrides_length(overrides)
    if length > OVERRIDES_BUDGET:
        raise JobSpecError(
            f"the job's command and env values make {length} characters of container overrides; ECS fails a "
            f"container past {OVERRIDES_LIMIT} (Batch adds its own variables, so at most {OVERRIDES_BUDGET} are "
            "ours): send large values through S3 or the job definition instead of env"
        )
    return overrides


# --- checks with messages that say what to do -----------------------------------------------------


def check_vcpus(value: float | int | None, platform: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise JobSpecError(f"vcpus={value!r} must be a positive number")
    if platform == "FARGATE" and value not in _FARGATE_VCPUS:
        allowed = ", ".join(str(v) for v in _FARGATE_VCPUS)
        raise JobSpecError(f"vcpus={value!r} is not a Fargate size; Fargate takes {allowed}")
    if platform != "FARGATE" and not float(value).is_integer():
        raise JobSpecError(f"vcpus={value!r}: EC2 compute environments take whole vCPUs (fractions are Fargate only)")
    return float(value)


def check_memory_mb(value: int | None) -> int | None:
    if value is not None and value < 4:
        raise JobSpecError(f"memory={value!r} MiB is below AWS Batch's minimum of 4 MiB")
    return value


def check_timeout(value: timedelta | int | None) -> int | None:
    """Seconds for ``attemptDurationSeconds``; Batch refuses less than 60."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, timedelta | int):
        raise JobSpecError(f"timeout={value!r}: give a timedelta or whole seconds")
    seconds = int(value.total_seconds()) if isinstance(value, timedelta) else value
    if seconds < MIN_ATTEMPT_DURATION_S:
        raise JobSpecError(
            f"timeout={value!r} is {seconds}s; AWS Batch's attemptDurationSeconds must be at least "
            f"{MIN_ATTEMPT_DURATION_S}s. Use 60s or more, or leave it out and rely on execution_timeout"
        )
    return seconds


def check_range(value: int | None, argument: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JobSpecError(f"{argument}={value!r} must be a whole number from {low} to {high}")
    return value


def cross_account_message(arn: str, role_kind: str, account: str) -> str:
    return (
        f"{role_kind}={arn!r} belongs to account {role_account(arn)}, but the job definition would be "
        f"registered in account {account}. RegisterJobDefinition only accepts roles of its own account "
        "(Batch passes the role to ECS in that account, and iam:PassRole cannot cross accounts). Create "
        f"a role in {account} for the job and let it assume the other account's role at run time "
        "(sts:AssumeRole, e.g. with AWS_ROLE_ARN/credential_process in the image), or register and run "
        "the job in the other account through an aws connection for that account"
    )
