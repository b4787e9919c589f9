"""Reading qstat's answers, for both PBS flavours: PBS Pro / OpenPBS and Torque.

Which flavour a login node runs (:func:`parse_flavour`), the one poll command for many ids, and
its answer read into the shared :class:`~airflow_hpc_provider.jobs.JobStatus`: state letters,
exit statuses and the server's negative exit codes. Pure functions, tested on recorded output.

Facts this module relies on:

* PBS Pro: ``qstat -x -f -F json <ids>`` reports running and finished (history) jobs in one call;
  ``Exit_status`` is the script's exit code (0-255), ``256 + signal`` when the job was killed by a
  signal (a ``qdel`` of a running job shows 271, SIGTERM), or a negative ``JOB_EXEC_*`` code from
  the server (-29 walltime, -27 memory: see ``PBS_PRO_EXEC_CODES``).
* Torque: ``qstat -f <ids>`` text blocks (``Job Id: 12.host``, indented ``key = value`` lines,
  long values continued on lines starting with a tab); finished jobs stay as ``C`` with
  ``exit_status`` for ``keep_completed`` seconds. Its negative codes differ from PBS Pro's
  (-11 is walltime exceeded in Torque, a rerun in PBS Pro), hence one table per flavour.
* The Torque-compatible wrappers around Slurm (Debian ``slurm-wlm-torque``): held jobs show as
  ``Q``; finished jobs show as ``C`` with no exit status at all (see
  :mod:`airflow_hpc_provider.dialects.pbs_exits` for how their end is learned); ``qstat -f`` shows
  no Variable_List; ``qstat`` exits 153 with no output when none of the ids is known; ``-x`` and
  ``-F`` are unknown.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.dialects.remote_shell import LogRead, quote
from airflow_hpc_provider.errors import ConnectionConfigError
from airflow_hpc_provider.jobs import JobState, JobStatus


class PbsFlavour(enum.Enum):
    """Which PBS the login node runs; they share directives but not qstat formats or exit codes."""

    PBS_PRO = "pbs_pro"
    TORQUE = "torque"


# One-letter job states -> shared states. C, F and X (finished) are decided by the exit status in
# map_state; anything not listed maps to UNKNOWN (and is logged by the poller).
PBS_STATES: Mapping[str, JobState] = {
    "Q": JobState.PENDING,
    "W": JobState.PENDING,  # waiting for its requested start time (qsub -a)
    "T": JobState.PENDING,  # being routed to another queue
    "H": JobState.HELD,
    "R": JobState.RUNNING,
    "B": JobState.RUNNING,  # PBS Pro array job with at least one subjob started
    "E": JobState.COMPLETING,  # exiting: the script ended, files are being staged out
    "S": JobState.SUSPENDED,
    "U": JobState.SUSPENDED,  # PBS Pro: suspended because the workstation became busy
    # PBS Pro: moved to another server. This server can no longer tell us how it ends, and the
    # poller must not wait forever for an answer that will never come here.
    "M": JobState.LOST,
}
FINISHED_STATES = frozenset({"C", "F", "X"})

# Negative Exit_status values are the server's own words. The first seven are the same in PBS Pro
# (openpbs src/include/job.h) and Torque (Torque 6 admin guide, "Job exit status").
_SHARED_EXEC_CODES: Mapping[int, tuple[str, JobState]] = {
    -1: ("JOB_EXEC_FAIL1: could not start the job, before staging files", JobState.FAILED),
    -2: ("JOB_EXEC_FAIL2: could not start the job, after staging files", JobState.FAILED),
    -3: ("JOB_EXEC_RETRY: start failed, to be retried", JobState.FAILED),
    -4: ("JOB_EXEC_INITABT: aborted while MoM initialised", JobState.NODE_FAIL),
    -5: ("JOB_EXEC_INITRST: aborted while MoM initialised (checkpointed)", JobState.NODE_FAIL),
    -6: ("JOB_EXEC_INITRMG: aborted while MoM initialised (checkpointed)", JobState.NODE_FAIL),
    -7: ("JOB_EXEC_BADRESRT: restart from checkpoint failed", JobState.FAILED),
}

PBS_PRO_EXEC_CODES: Mapping[int, tuple[str, JobState]] = {
    **_SHARED_EXEC_CODES,
    -10: ("JOB_EXEC_FAILUID: invalid user or group for the job", JobState.FAILED),
    -11: ("JOB_EXEC_RERUN: job rerun", JobState.FAILED),
    -12: ("JOB_EXEC_CHKP: checkpointed and killed", JobState.FAILED),
    -13: ("JOB_EXEC_FAIL_PASSWORD: bad password", JobState.FAILED),
    -14: ("JOB_EXEC_RERUN_SIS_FAIL: rerun after a sister node failed", JobState.NODE_FAIL),
    -15: ("JOB_EXEC_QUERST: requeued for restart from checkpoint", JobState.FAILED),
    -16: ("JOB_EXEC_FAILHOOK_RERUN: a hook rejected the start", JobState.FAILED),
    -17: ("JOB_EXEC_FAILHOOK_DELETE: a hook rejected the start", JobState.FAILED),
    -18: ("JOB_EXEC_HOOK_RERUN: a hook requeued the job", JobState.FAILED),
    -19: ("JOB_EXEC_HOOK_DELETE: a hook deleted the job", JobState.CANCELLED),
    -20: ("JOB_EXEC_RERUN_MS_FAIL: lost the mother superior node", JobState.NODE_FAIL),
    -21: ("JOB_EXEC_FAIL_SECURITY: PBS directory security check failed", JobState.FAILED),
    -22: ("JOB_EXEC_HOOKERROR: a hook failed or timed out", JobState.FAILED),
    -23: ("JOB_EXEC_FAIL_KRB5: no Kerberos credentials", JobState.FAILED),
    -24: ("JOB_EXEC_KILL_NCPUS_BURST: killed for using more CPUs than requested", JobState.FAILED),
    -25: ("JOB_EXEC_KILL_NCPUS_SUM: killed for using more CPUs than requested", JobState.FAILED),
    -26: ("JOB_EXEC_KILL_VMEM: killed for exceeding vmem", JobState.OUT_OF_MEMORY),
    -27: ("JOB_EXEC_KILL_MEM: killed for exceeding mem", JobState.OUT_OF_MEMORY),
    -28: ("JOB_EXEC_KILL_CPUT: killed for exceeding cput", JobState.TIMEOUT),
    -29: ("JOB_EXEC_KILL_WALLTIME: killed for exceeding walltime", JobState.TIMEOUT),
    -30: ("JOB_EXEC_JOINJOB: join job error", JobState.FAILED),
}

# Torque's table: the shared first seven, then its own.
TORQUE_EXEC_CODES: Mapping[int, tuple[str, JobState]] = {
    **_SHARED_EXEC_CODES,
    -8: ("JOB_EXEC_CMDFAIL: could not exec the job's command", JobState.FAILED),
    -9: ("JOB_EXEC_STDOUTFAIL: could not create the output files", JobState.FAILED),
    -10: ("JOB_EXEC_OVERLIMIT_MEM: exceeded a memory limit", JobState.OUT_OF_MEMORY),
    -11: ("JOB_EXEC_OVERLIMIT_WT: exceeded the walltime limit", JobState.TIMEOUT),
    -12: ("JOB_EXEC_OVERLIMIT_CPUT: exceeded the cpu time limit", JobState.TIMEOUT),
    -13: ("JOB_EXEC_RETRY_CGROUP: cgroup setup failed, to be retried", JobState.FAILED),
    -14: ("JOB_EXEC_RETRY_PROLOGUE: prologue failed, to be retried", JobState.FAILED),
}

_EXEC_CODES = {PbsFlavour.PBS_PRO: PBS_PRO_EXEC_CODES, PbsFlavour.TORQUE: TORQUE_EXEC_CODES}

# Exit statuses above 256 mean "killed by signal (status - 256)" in both flavours.
_SIGNAL_BASE = 256
_SIGTERM = 15

# 1234, 1234.server, 1234[].server, 1234[7].server.domain
JOB_ID = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9_.-]+)?$")


def checked_id(job_id: str) -> str:
    # Ids come back from our own submissions; anything else is a bug, not something to quote past
    # (the wrapper's qstat treats ids as regular expressions).
    if not JOB_ID.match(job_id):
        raise ValueError(f"{job_id!r} is not a PBS job id")
    return job_id


_WRAPPER_ELEMENT = re.compile(r"^(\d+)\[(\d+)\]$")


def slurm_name(job_id: str) -> str | None:
    """``123_4`` for an array element ``123[4]`` of the Torque-compatible wrappers around Slurm (a
    bare array id with an index), which their qstat cannot name; None for any other id (PBS Pro's
    and Torque's carry their server's name). The caller knows the flavour is Torque."""
    match = _WRAPPER_ELEMENT.match(job_id)
    return f"{match.group(1)}_{match.group(2)}" if match else None


def short_id(job_id: str) -> str:
    """``1234.server`` -> ``1234``: qsub and qstat may disagree about the server suffix."""
    return job_id.split(".", 1)[0]


# --- the flavour --------------------------------------------------------------------------------

FLAVOUR_PROBE = "qstat --version 2>&1\n"


def parse_flavour(probe_output: str) -> PbsFlavour:
    """PBS Pro and OpenPBS answer ``pbs_version = ...``; Torque and the wrappers answer otherwise.

    No qstat at all is an error, not a guess: the connection then needs ``login_shell`` (modules)
    or its ``flavour`` set.
    """
    if "pbs_version" in probe_output:
        return PbsFlavour.PBS_PRO
    if re.search(r"qstat: (command )?not found|No such file or directory", probe_output):
        raise ConnectionConfigError(
            f"the login node has no qstat on its PATH ({probe_output.strip()!r}): turn on the connection's "
            "login_shell if PBS comes from a module, or set its flavour"
        )
    return PbsFlavour.TORQUE


# --- polling ----------------------------------------------------------------------------------


def poll_script(token: str, job_ids: Sequence[str], reads: Sequence[LogRead], flavour: PbsFlavour) -> str:
    """One qstat for every id, its stderr kept apart (so an 'Unknown Job Id' line can never land
    inside the JSON or a text block), then the log reads."""
    ids = " ".join(quote(checked_id(job_id)) for job_id in job_ids)
    command = f"qstat -x -f -F json {ids}" if flavour is PbsFlavour.PBS_PRO else f"qstat -f {ids}"
    body = (
        "_qe=$(mktemp) || { printf '%s section qstat 1\\nno temporary file\\n' \"$_t\"; exit 1; }\n"
        + remote_shell.section(token, "qstat", f'{{ {command} 2>"$_qe"; }}')
        + remote_shell.section(token, "qstat_stderr", 'cat -- "$_qe"')
        + 'rm -f -- "$_qe"\n'
    )
    return remote_shell.poll_script(token, body, reads)


@dataclass(frozen=True)
class PbsPoll:
    """What one poll learned: statuses of the ids qstat showed; the others are simply absent
    (``unknown_ids`` lists those qstat said it does not know); ``errors`` for the log."""

    statuses: dict[str, JobStatus]
    unknown_ids: tuple[str, ...]
    errors: tuple[str, ...]


_UNKNOWN_JOB = re.compile(r"Unknown Job Id(?: Error)?\s+(\S+)", re.IGNORECASE)
# qstat's exit status when some id is unknown (PBSE_UNKJOBID % 256); the wrapper uses it too.
_RC_UNKNOWN = 153


def parse_poll(sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str], flavour: PbsFlavour) -> PbsPoll:
    errors: list[str] = []
    unknown: set[str] = set()
    found: dict[str, JobStatus] = {}
    rc, text = sections.get("qstat", (0, ""))
    _, stderr = sections.get("qstat_stderr", (0, ""))
    for line in stderr.splitlines():
        match = _UNKNOWN_JOB.search(line)
        if match:
            unknown.add(match.group(1))
        elif line.strip():
            errors.append(f"qstat: {line.strip()}")
    if "qstat" not in sections:
        errors.append("the poll printed no qstat section")
    elif flavour is PbsFlavour.PBS_PRO:
        try:
            found = parse_qstat_json(text, flavour)
        except ValueError as error:
            errors.append(f"qstat -F json output is not readable: {error}")
    else:
        found = parse_qstat_full(text, flavour)
    if rc not in (0, _RC_UNKNOWN) and not found:
        errors.append(f"qstat exited {rc}: {(text + ' ' + stderr).strip()!r}")
    statuses: dict[str, JobStatus] = {}
    missing: list[str] = []
    for job_id in job_ids:
        status = _lookup(found, job_id)
        if status is None:
            # Absent is never success: the poller decides, after its own grace, that it is LOST.
            if job_id in unknown or short_id(job_id) in {short_id(u) for u in unknown} or rc == _RC_UNKNOWN:
                missing.append(job_id)
            continue
        statuses[job_id] = status if status.job_id == job_id else _renamed(status, job_id)
    return PbsPoll(statuses=statuses, unknown_ids=tuple(missing), errors=tuple(errors))


def _lookup(found: Mapping[str, JobStatus], job_id: str) -> JobStatus | None:
    """Our id as qsub printed it may carry a server suffix qstat drops, or the other way round."""
    if job_id in found:
        return found[job_id]
    short = short_id(job_id)
    matches = [status for key, status in found.items() if short_id(key) == short]
    return matches[0] if len(matches) == 1 else None


def _renamed(status: JobStatus, job_id: str) -> JobStatus:
    return JobStatus(**{**status.__dict__, "job_id": job_id})


def parse_qstat_json(text: str, flavour: PbsFlavour = PbsFlavour.PBS_PRO) -> dict[str, JobStatus]:
    """PBS Pro's ``qstat -f -F json``: ``{"Jobs": {"1234.server": {"job_state": "R", ...}}}``."""
    if not text.strip():
        return {}
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON object in {text[:200]!r}")
    try:
        document = json.loads(text[start:])
    except json.JSONDecodeError:
        # Some PBS versions write raw control characters (a tab in a comment) inside strings.
        try:
            document = json.loads(text[start:], strict=False)
        except json.JSONDecodeError as error:
            raise ValueError(str(error)) from None
    if not isinstance(document, dict):
        raise ValueError("the JSON document is not an object")
    jobs = document.get("Jobs") or {}
    if not isinstance(jobs, dict):
        raise ValueError("'Jobs' is not an object")
    statuses: dict[str, JobStatus] = {}
    for job_id, attributes in jobs.items():
        if not isinstance(attributes, dict):
            continue
        flat = _flatten(attributes)
        statuses[job_id] = status_from_attributes(job_id, flat, flavour)
    return statuses


def _flatten(attributes: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"resources_used": {"walltime": ...}}`` -> ``{"resources_used.walltime": ...}``, as qstat -f text."""
    flat: dict[str, str] = {}
    for key, value in attributes.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif value is not None:
            flat[name] = str(value)
    return flat


_ATTRIBUTE = re.compile(r"^[ \t]+([A-Za-z_][A-Za-z0-9_.]*) = (.*)$")


def parse_qstat_full(text: str, flavour: PbsFlavour = PbsFlavour.TORQUE) -> dict[str, JobStatus]:
    """``qstat -f`` text, as Torque, PBS Pro and the Slurm wrapper print it.

    A block starts at ``Job Id: <id>``; ``key = value`` lines are indented (four spaces, or a tab
    on the wrapper); a line that starts with a tab and is not ``key = value`` continues the value
    before it.
    """
    statuses: dict[str, JobStatus] = {}
    job_id: str | None = None
    attributes: dict[str, str] = {}
    last: str | None = None

    def close() -> None:
        if job_id:
            statuses[job_id] = status_from_attributes(job_id, attributes, flavour)

    for line in text.splitlines():
        if line.startswith("Job Id:"):
            close()
            job_id, attributes, last = line[len("Job Id:") :].strip(), {}, None
            continue
        if job_id is None:
            continue
        match = _ATTRIBUTE.match(line)
        if match:
            last = match.group(1)
            attributes[last] = match.group(2).rstrip()
        elif line.startswith("\t") and last is not None:
            attributes[last] += line[1:].rstrip()
    close()
    return statuses


def status_from_attributes(job_id: str, attributes: Mapping[str, str], flavour: PbsFlavour) -> JobStatus:
    fields = {key.lower(): value for key, value in attributes.items()}
    native = fields.get("job_state", "").strip()
    exit_status = _int_or_none(fields.get("exit_status"))
    comment = fields.get("comment") or None
    state, reason, signal = map_state(native, exit_status, comment, flavour)
    return JobStatus(
        job_id=job_id,
        state=state,
        native_state=native or "?",
        reason=reason,
        nodes=parse_exec_host(fields.get("exec_host", "")),
        exit_code=exit_status if state.is_terminal else None,
        signal=signal,
        elapsed=parse_walltime(fields.get("resources_used.walltime", "")),
        max_rss_mb=parse_size_mb(fields.get("resources_used.mem", "")),
    )


def map_state(
    native: str, exit_status: int | None, comment: str | None, flavour: PbsFlavour
) -> tuple[JobState, str | None, int | None]:
    """(state, reason, signal) from the state letter, the exit status and the server's comment.

    A finished job succeeds only on an exit status of exactly 0. Without an exit status (the
    Slurm-backed wrapper never has one; an array parent has none) it is FAILED with a reason that
    says the outcome is unknown: a finished job must never pass for a success by absence.
    """
    letter = native.strip().upper()[:1]
    if letter not in FINISHED_STATES:
        state = PBS_STATES.get(letter, JobState.UNKNOWN)
        reason = comment
        if letter == "M":
            reason = "moved to another server" + (f"; {comment}" if comment else "")
        return state, reason, None
    deleted = bool(comment and re.search(r"\bdeleted\b", comment, re.IGNORECASE))
    if exit_status is None:
        if deleted:
            return JobState.CANCELLED, comment, None
        note = "finished, but qstat reports no exit status: the outcome is unknown"
        return JobState.FAILED, note + (f"; {comment}" if comment else ""), None
    if exit_status == 0:
        # A success needs no reason, and a comment left from the wait would read as one.
        return JobState.COMPLETED, None, None
    if exit_status < 0:
        word, state = _EXEC_CODES[flavour].get(exit_status, (f"server exit code {exit_status}", JobState.FAILED))
        if deleted:
            state = JobState.CANCELLED
        return state, word + (f"; {comment}" if comment else ""), None
    if exit_status > _SIGNAL_BASE:
        # The summary names the signal (jobs.describe_exit); the reason is the server's comment.
        signal = exit_status - _SIGNAL_BASE
        state = JobState.CANCELLED if deleted or signal == _SIGTERM else JobState.FAILED
        return state, comment, signal
    return (JobState.CANCELLED if deleted else JobState.FAILED), comment, None


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def parse_exec_host(text: str) -> str | None:
    """``n1/0*2+n1/1+n2/0`` or ``n1/0-3`` -> ``n1,n2``: the hosts, once each, in order."""
    hosts: list[str] = []
    for part in text.strip().split("+"):
        host = part.split("/", 1)[0].strip()
        if host and host not in hosts and host != "--":
            hosts.append(host)
    return ",".join(hosts) or None


def parse_walltime(text: str) -> timedelta | None:
    """``HH:MM:SS`` (hours unbounded), ``MM:SS`` or seconds -> timedelta; anything else None."""
    match = re.fullmatch(r"(?:(?:(\d+):)?(\d+):)?(\d+)", text.strip())
    if not match:
        return None
    hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


_SIZE_FACTOR_MB = {"b": 1 / 1024**2, "kb": 1 / 1024, "mb": 1.0, "gb": 1024.0, "tb": 1024.0**2}


def parse_size_mb(text: str) -> float | None:
    """PBS sizes: ``123456kb``, ``2gb``, ``512mb``, ``1024`` (bytes) -> MiB."""
    match = re.fullmatch(r"(\d+)\s*([kmgt]?b)?", text.strip().lower())
    if not match:
        return None
    return round(int(match.group(1)) * _SIZE_FACTOR_MB[match.group(2) or "b"], 1)
