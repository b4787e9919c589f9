"""The EC2 ephemeral runner, as pure text and pure decisions: no boto3, no SSH here.

* :func:`render_user_data`: the script an instance runs at boot. It publishes its SSH host keys on
  the serial console (so the controller can verify them), arms a safety timer, waits for the task
  (script and environment) to arrive over the SSM tunnel, pulls the image, runs the container under
  ``timeout -k`` with ``docker run --init``, tees the output to a log file and writes the exit code
  atomically to a sentinel. Nothing secret is in it: env values never travel in user-data.
* :func:`render_payload`: the script sent over the tunnel (stdin to ``sh -s``) that delivers the
  task's script and env values into the run directory, once.
* :class:`Ec2RunnerDialect`: the poller's view of one instance (phase file, sentinel, whether the
  runner still lives, log reader).
* tags, instance-type choice, console host-key parsing and the reaper's decision.
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

# EC2 refuses user-data above 16 KB (before base64).
USER_DATA_LIMIT_BYTES = 16 * 1024
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
HOST_KEY_MARKER = "AIRFLOW_HPC_HOST_KEY"
_TAG_VALUE_MAX = 256
_PARTITION = re.compile(r"^[A-Za-z0-9_.+-]+$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]*$")
_HOST_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(?:256|384|521)|ssh-rsa) ([A-Za-z0-9+/=]+)$")


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


# --- user-data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerSpec:
    """What the boot script needs. Times in whole seconds: the shell does integer arithmetic."""

    image: str
    run_dir: str
    os_user: str
    time_limit_s: int
    kill_after_s: int
    startup_timeout_s: int
    idle_slack_s: int
    shell: str = "/bin/sh"
    container_name: str = "airflow-hpc-task"
    tick_s: float = 5.0


def render_user_data(spec: RunnerSpec) -> str:
    """The boot script (bash). Every value is quoted; nothing in it is secret."""
    check_image(spec.image)
    values = (
        f"W={quote(spec.run_dir)}\n"
        f"IMAGE={quote(spec.image)}\n"
        f"OS_USER={quote(spec.os_user)}\n"
        f"SHELL_PATH={quote(spec.shell)}\n"
        f"NAME={quote(spec.container_name)}\n"
        f"LIMIT={int(spec.time_limit_s)}\n"
        f"KILL_AFTER={int(spec.kill_after_s)}\n"
        f"STARTUP={int(spec.startup_timeout_s)}\n"
        f"SLACK={int(spec.idle_slack_s)}\n"
        f"TICK={quote(f'{spec.tick_s:g}')}\n"
    )
    return _USER_DATA_HEAD + values + _USER_DATA_BODY


_USER_DATA_HEAD = """#!/bin/bash
# airflow-hpc-provider EC2 ephemeral runner. Secrets never appear here: the task's script and env
# values arrive later over the SSM tunnel. No `set -x`: nothing this script handles is echoed.
set -u
umask 022
"""

# $AIRFLOW_HPC_CONSOLE and $AIRFLOW_HPC_HOST_KEY_DIR exist for tests that run this script on an
# ordinary host; on an instance neither is set and the real console and /etc/ssh are used.
_USER_DATA_BODY = r"""
CONSOLE=${AIRFLOW_HPC_CONSOLE:-/dev/console}
HOST_KEY_DIR=${AIRFLOW_HPC_HOST_KEY_DIR:-/etc/ssh}
BOOTED=$(date +%s)
mkdir -p "$W/payload" "$W/cursor"
chmod 0755 "$W"
chmod 0700 "$W/payload" "$W/cursor"
# The SSH user delivers the task into payload/ and keeps the log cursor in cursor/.
chown "$OS_USER" "$W/payload" "$W/cursor" 2>/dev/null || true
: >> "$W/job.log"
chmod 0644 "$W/job.log"

phase() { printf '%s\n' "$1" > "$W/phase.tmp" && mv -f "$W/phase.tmp" "$W/phase"; }
finish() {
  # Atomic: a reader sees no sentinel or a whole one, never a half-written exit code.
  printf '%s\n' "$1" > "$W/exit_code.tmp" && mv -f "$W/exit_code.tmp" "$W/exit_code"
  phase done
}
note() { printf '[airflow-hpc runner] %s\n' "$1" >> "$W/job.log"; }

# Who the runner is (pid and start time, which tells a reused pid apart): a probe that finds this
# process gone with no exit code written knows the runner died (killed, OOM, a crashed agent).
printf '%s %s\n' "$$" "$(sed 's/.*) //' "/proc/$$/stat" | cut -d' ' -f20)" > "$W/runner.tmp"
mv -f "$W/runner.tmp" "$W/runner"

# Host keys on the serial console: GetConsoleOutput lets the controller verify sshd's identity
# without ever having seen this instance before. Public keys only.
for key in "$HOST_KEY_DIR"/ssh_host_*_key.pub; do
  [ -f "$key" ] || continue
  printf '%s %s\n' "$HOST_KEY_MARKER" "$(cut -d' ' -f1,2 < "$key")" >> "$CONSOLE" 2>/dev/null || true
done

# Safety timer: whatever happens to Airflow, the instance powers off (and, launched with
# InstanceInitiatedShutdownBehavior=terminate, is terminated) after the start-up window + time
# limit + kill grace + idle slack, or SLACK seconds after the task ended, whichever comes first.
safety_timer() {
  deadline=$((BOOTED + STARTUP + LIMIT + KILL_AFTER + SLACK))
  while :; do
    now=$(date +%s)
    if [ -f "$W/exit_code" ]; then
      ended=$(stat -c %Y "$W/exit_code" 2>/dev/null || echo "$now")
      [ "$now" -ge $((ended + SLACK)) ] && break
    fi
    [ "$now" -ge "$deadline" ] && break
    sleep "$TICK"
  done
  note "safety timer: powering off"
  poweroff
}
safety_timer </dev/null >/dev/null 2>&1 &

phase waiting
while [ ! -f "$W/payload/ready" ]; do
  if [ "$(date +%s)" -ge $((BOOTED + STARTUP)) ]; then
    note "no task arrived within ${STARTUP}s of boot: giving up"
    finish 125
    exit 0
  fi
  sleep "$TICK"
done

phase pulling
if ! docker pull "$IMAGE" >> "$W/job.log" 2>&1; then
  note "could not pull $IMAGE"
  rm -f "$W/payload/env.sh"
  finish 125
  exit 0
fi

phase running
STARTED=$(date +%s)
(
  # Values come from a file the controller wrote over the tunnel; docker reads them from this
  # subshell's environment (-e NAME, no value on any command line).
  . "$W/payload/env.sh"
  set --
  for name in ${AIRFLOW_HPC_ENV_NAMES:-}; do set -- "$@" -e "$name"; done
  exec timeout -k "$KILL_AFTER" "$LIMIT" docker run --rm --init --name "$NAME" "$@" \
    -v "$W/payload/script.sh:/airflow-hpc/script.sh:ro" --entrypoint "$SHELL_PATH" \
    "$IMAGE" /airflow-hpc/script.sh
) 2>&1 | tee -a "$W/job.log"
rc=${PIPESTATUS[0]}
rm -f "$W/payload/env.sh"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  if [ $(($(date +%s) - STARTED)) -ge "$LIMIT" ]; then
    : > "$W/time_limit_reached"
    note "time limit of ${LIMIT}s reached: container stopped"
  else
    note "the container was killed (exit $rc) before the time limit"
  fi
  # A killed docker client can leave its container running: remove it for sure.
  docker rm -f "$NAME" > /dev/null 2>&1 || true
fi
finish "$rc"
""".replace("$HOST_KEY_MARKER", HOST_KEY_MARKER)


def check_user_data_size(user_data: str) -> None:
    size = len(user_data.encode())
    if size > USER_DATA_LIMIT_BYTES:
        raise JobSpecError(
            f"the boot script is {size} bytes; EC2 takes at most {USER_DATA_LIMIT_BYTES}. "
            "The task's script already travels over the tunnel; shorten the image name or setup"
        )


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


# --- host keys from the console ---------------------------------------------------------------------


def host_keys_from_console(text: str) -> tuple[str, ...]:
    """Our runner's marker lines, else cloud-init's ``BEGIN SSH HOST KEY KEYS`` block; deduplicated."""
    ours = [line.split(" ", 1)[1].strip() for line in text.splitlines() if line.startswith(HOST_KEY_MARKER + " ")]
    found = [key for key in ours if _HOST_KEY.match(key)]
    if not found:
        inside = False
        for raw in text.splitlines():
            line = raw.strip()
            if "BEGIN SSH HOST KEY KEYS" in line:
                inside = True
            elif "END SSH HOST KEY KEYS" in line:
                inside = False
            elif inside:
                parts = line.split()
                if len(parts) >= 2 and _HOST_KEY.match(f"{parts[0]} {parts[1]}"):
                    found.append(f"{parts[0]} {parts[1]}")
    return tuple(dict.fromkeys(found))


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
