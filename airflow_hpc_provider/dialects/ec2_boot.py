"""The EC2 ephemeral runner's boot script (user-data) and the SSH host keys it publishes on the
serial console, as pure text: no boto3, no SSH here.

* :func:`render_user_data`: the script an instance runs at boot. It publishes its SSH host keys on
  the serial console (so the controller can verify them), arms a safety timer, waits for the task
  (script and environment) to arrive over the SSM tunnel, pulls the image, runs the container under
  ``timeout -k`` with ``docker run --init``, tees the output to a log file and writes the exit code
  atomically to a sentinel. Nothing secret is in it: env values never travel in user-data.
* :func:`host_keys_from_console`: those keys read back from the console output.

What the runner leaves behind (phase, sentinel, exit codes) is read in
:mod:`airflow_hpc_provider.dialects.ec2`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_hpc_provider.dialects.ec2 import check_image
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.errors import JobSpecError

# EC2 refuses user-data above 16 KB (before base64).
USER_DATA_LIMIT_BYTES = 16 * 1024
HOST_KEY_MARKER = "AIRFLOW_HPC_HOST_KEY"
_HOST_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(?:256|384|521)|ssh-rsa) ([A-Za-z0-9+/=]+)$")


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
