"""The EC2 ephemeral runner, as pure text and pure decisions: no boto3, no SSH here.

* :func:`render_payload`: the script sent over the tunnel (stdin to ``sh -s``) that delivers the
  task's script and env values into the run directory, once.
* :class:`Ec2RunnerDialect`: the poller's view of one instance (phase file, sentinel, whether the
  runner still lives, log reader).
* tags, instance-type choice and the reaper's decision.

The boot script that runs the task on the instance, and the host keys it publishes, are in
:mod:`airflow_hpc_provider.dialects.ec2_boot`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from airflow_hpc_provider.dialects.base import Observation, PollReport
from airflow_hpc_provider.dialects.remote_shell import (
    LogRead,
    export_lines,
    heredoc,
    quote,
    section,
)
from airflow_hpc_provider.dialects.remote_shell import (
    poll_script as framed_poll_script,
)
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobState, JobStatus

DEFAULT_TAG_PREFIX = "airflow-hpc"
DEFAULT_WORK_DIR = "/var/lib/airflow-hpc"
DEFAULT_OS_USER = "ec2-user"
# `timeout` exits 124 when it sent the first signal, 137 (128 + KILL) when -k had to follow up. A
# container killed by anything else (the OOM killer, `docker kill`) also ends 137: only the runner's
# own "time_limit_reached" marker says that the time limit did it.
TIMEOUT_EXIT_CODES = frozenset({124, 137})
# The runner writes this exit code when the task never arrived or the image could not be pulled.
RUNNER_FAILED_EXIT = 125
LIVE_INSTANCE_STATES = ("pending", "running", "stopping", "stopped")
_TAG_VALUE_MAX = 256
_PARTITION = re.compile(r"^[A-Za-z0-9_.+-]+$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]*$")


# --- tags -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskTags:
    """Who an instance belongs to, as stored in its tags ``<prefix>:dag``, ``:task``, ``:run``..."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int
    backend: str
    key: JobKey

    def tags(self, prefix: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        values = {
            f"{prefix}:dag": self.dag_id,
            f"{prefix}:task": self.task_id,
            f"{prefix}:run": self.run_id,
            f"{prefix}:map-index": str(self.map_index),
            f"{prefix}:try": str(self.try_number),
            f"{prefix}:backend": self.backend,
            # The digest names the task instance whatever the length of its ids: adoption uses it.
            f"{prefix}:key": self.key.tag,
            "Name": f"{self.dag_id}.{self.task_id}",
        }
        merged = {**dict(extra or {}), **values}  # ours win: adoption and the reaper depend on them
        return {name: value[:_TAG_VALUE_MAX] for name, value in merged.items()}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], prefix: str) -> TaskTags | None:
        key_text = tags.get(f"{prefix}:key", "")
        digest = JobKey.task_digest_of(key_text)
        if digest is None:
            return None
        try:
            try_number = int(tags.get(f"{prefix}:try", "0"))
            map_index = int(tags.get(f"{prefix}:map-index", "-1"))
        except ValueError:
            return None
        return cls(
            dag_id=tags.get(f"{prefix}:dag", ""),
            task_id=tags.get(f"{prefix}:task", ""),
            run_id=tags.get(f"{prefix}:run", ""),
            map_index=map_index,
            try_number=try_number,
            backend=tags.get(f"{prefix}:backend", ""),
            key=JobKey(task_digest=digest, try_number=try_number),
        )


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": name, "Value": value} for name, value in tags.items()]


def tag_dict(tags: Sequence[Mapping[str, str]] | None) -> dict[str, str]:
    return {str(tag["Key"]): str(tag["Value"]) for tag in tags or ()}


def run_dir_for(work_dir: str, key: JobKey) -> str:
    """One directory per task try, so runs never share files (and tests can share one host)."""
    return f"{work_dir.rstrip('/')}/{key.task_digest}-try{key.try_number}"


# --- checks at parse time ---------------------------------------------------------------------------


def check_instance_types(types: Mapping[str, str]) -> dict[str, str]:
    if "default" not in types:
        raise JobSpecError(
            f"instance_types={dict(types)!r} needs a 'default' entry (used when the task names no partition)"
        )
    for partition, instance_type in types.items():
        if not _PARTITION.match(partition) or not re.match(r"^[a-z0-9-]+\.[a-z0-9-]+$", instance_type):
            raise JobSpecError(f"instance_types: {partition!r} -> {instance_type!r} is not 'partition' -> 'type.size'")
    return dict(types)


def choose_instance_type(types: Mapping[str, str], partition: str | None) -> str:
    if partition is None:
        return types["default"]
    if partition not in types:
        known = ", ".join(sorted(types))
        raise JobSpecError(f"partition={partition!r} has no instance type; known partitions: {known}")
    return types[partition]


def check_image(image: str) -> str:
    if not _IMAGE.match(image):
        raise JobSpecError(f"image={image!r} is not a container image reference")
    return image


# --- payload over the tunnel ------------------------------------------------------------------------


def render_payload(run_dir: str, script: str, env: Mapping[str, str]) -> str:
    """Deliver script and env once (a second delivery is a no-op) and say ``delivered``/``already``."""
    payload = f"{run_dir.rstrip('/')}/payload"
    names = " ".join(env)
    env_text = export_lines(env) + f"AIRFLOW_HPC_ENV_NAMES={quote(names)}\n"
    return (
        "set -eu\numask 077\n"
        f"d={quote(payload)}\n"
        'if [ -f "$d/ready" ]; then echo already; exit 0; fi\n'
        + heredoc(script, feed='cat > "$d/script.sh.tmp"')
        + heredoc(env_text, feed='cat > "$d/env.sh.tmp"')
        # The container may run as another uid: the script (not the env) must be world-readable.
        + 'chmod 0644 "$d/script.sh.tmp"\n'
        'mv -f "$d/script.sh.tmp" "$d/script.sh"\n'
        'mv -f "$d/env.sh.tmp" "$d/env.sh"\n'
        'date +%s > "$d/ready.tmp"\nmv -f "$d/ready.tmp" "$d/ready"\n'
        "echo delivered\n"
    )


def readiness_script(run_dir: str) -> str:
    """Prints ``ready`` once the boot script made the run directory, else ``booting``."""
    return f"if [ -d {quote(run_dir.rstrip('/') + '/payload')} ]; then echo ready; else echo booting; fi\n"


# --- probing --------------------------------------------------------------------------------------


def log_path(run_dir: str) -> str:
    return f"{run_dir.rstrip('/')}/job.log"


def cursor_path(run_dir: str) -> str:
    return f"{run_dir.rstrip('/')}/cursor/offset"


_PHASES = {
    "booting": JobState.PENDING,
    "waiting": JobState.PENDING,
    "pulling": JobState.PENDING,
    "running": JobState.RUNNING,
}


def status_from_exit(job_id: str, code: int, time_limit_reached: bool = False) -> JobStatus:
    if code == 0:
        return JobStatus(job_id=job_id, state=JobState.COMPLETED, native_state="COMPLETED", exit_code=code)
    if code in TIMEOUT_EXIT_CODES and time_limit_reached:
        return JobStatus(
            job_id=job_id, state=JobState.TIMEOUT, native_state="TIMEOUT", exit_code=code, reason="time limit reached"
        )
    reason = None
    if code in TIMEOUT_EXIT_CODES:
        reason = "the container was killed before its time limit (out of memory, or stopped from outside)"
    return JobStatus(job_id=job_id, state=JobState.FAILED, native_state="FAILED", exit_code=code, reason=reason)


def runner_gone(job_id: str, phase: str) -> JobStatus:
    """The runner died without writing an exit code: a failure of unknown exit, never a time limit."""
    return JobStatus(
        job_id=job_id,
        state=JobState.FAILED,
        native_state="RUNNER_GONE",
        reason=(
            f"the runner on the instance died while {phase or 'booting'} without writing an exit code "
            "(killed, out of memory, or its container gone); the job's end is unknown"
        ),
    )


class Ec2RunnerDialect:
    """What the shared :class:`~airflow_hpc_provider.watching.cluster.ClusterPoller` asks of one instance."""

    name = "EC2"

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir.rstrip("/")

    def poll_script(self, token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str:
        body = ""
        if job_ids:
            body = section(token, "runner", _probe(quote(self.run_dir)))
        return framed_poll_script(token, body, reads)

    def read_poll(self, sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str]) -> PollReport:
        if not job_ids:
            return PollReport(observations={})
        if "runner" not in sections:
            return PollReport(observations={}, failure="the probe printed nothing")
        rc, text = sections["runner"]
        if rc != 0:
            return PollReport(observations={}, failure=f"the probe exited {rc}: {text!r}")
        kind, _, value = text.strip().partition(" ")
        observations: dict[str, Observation] = {}
        for job_id in job_ids:
            code, _, flag = value.strip().partition(" ")
            if kind == "exit" and code.lstrip("-").isdigit():
                status = status_from_exit(job_id, int(code), time_limit_reached=flag == "limit")
                observations[job_id] = Observation(status, final=True)
            elif kind == "gone":
                observations[job_id] = Observation(runner_gone(job_id, value.strip()), final=True)
            else:
                phase = value.strip() or "booting"
                state = _PHASES.get(phase, JobState.UNKNOWN)
                observations[job_id] = Observation(JobStatus(job_id, state, phase.upper()), final=False)
        return PollReport(observations=observations)

    def cancel_script(self, job_ids: Sequence[str]) -> str:
        # An instance is cancelled by terminating it through the EC2 API, never over SSH.
        return "true\n"


def _probe(w: str) -> str:
    """Prints ``exit <code> [limit]``, ``phase <phase>`` or ``gone <phase>`` (the runner died).

    The exit code is looked at again after the runner is found gone: a runner that wrote it and
    exited between the two looks ended normally.
    """
    exit_line = f"printf 'exit %s%s' \"$(cat {w}/exit_code)\" \"$([ -f {w}/time_limit_reached ] && printf ' limit')\""
    return (
        f"if [ -f {w}/exit_code ]; then {exit_line}; "
        f"elif [ -f {w}/phase ]; then "
        f"p=$(cat {w}/phase); alive=yes; "
        f"if [ -r {w}/runner ]; then read -r pid start < {w}/runner; "
        "now=$(sed 's/.*) //' \"/proc/$pid/stat\" 2>/dev/null | cut -d' ' -f20); "
        '[ "$now" = "$start" ] || alive=no; fi; '
        f'if [ "$alive" = yes ]; then printf \'phase %s\' "$p"; '
        f"elif [ -f {w}/exit_code ]; then {exit_line}; "
        "else printf 'gone %s' \"$p\"; fi; "
        "else printf 'phase booting'; fi"
    )


# --- the reaper -------------------------------------------------------------------------------------

# Task-instance states in which an instance may still be needed (a retry adopts it).
LIVE_TASK_STATES = frozenset(
    {"scheduled", "queued", "running", "deferred", "up_for_retry", "up_for_reschedule", "restarting"}
)


@dataclass(frozen=True)
class ReapCandidate:
    instance_id: str
    state: str
    launched: datetime
    owner: TaskTags | None


def reap_reason(candidate: ReapCandidate, task_state: str | None, now: datetime, min_age: timedelta) -> str | None:
    """Why this instance should go, or ``None`` to keep it."""
    if now - candidate.launched < min_age:
        return None  # just launched: its task may not have recorded its state yet
    if candidate.owner is None:
        return "its tags do not name a task instance"
    if task_state is None:
        return "its task instance no longer exists"
    if task_state not in LIVE_TASK_STATES:
        return f"its task instance is {task_state}"
    return None
