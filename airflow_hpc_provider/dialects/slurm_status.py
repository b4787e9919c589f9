"""Slurm's answers: the one poll that asks squeue and sacct about many jobs, their lines read into
the shared :class:`~airflow_hpc_provider.jobs.JobStatus`, and what a poll may conclude from them.

Pure functions, tested with recorded real output. Facts they rely on (Slurm 22.05, checked on the
test cluster):

* ``squeue -j a,b`` with some unknown ids lists the known ones; with one unknown id alone it exits 1
  with ``slurm_load_jobs error: Invalid job id specified``, with several unknown ids it exits 0 and
  prints nothing. Its ``exit_code`` field is the raw wait status (``exit 3`` shows 768).
* ``sacct`` reports ``CANCELLED by <uid>``; TIMEOUT shows exit ``0:0``; OUT_OF_MEMORY ``0:125``;
  a job can leave squeue before sacct has its end (the gap), so only sacct's word is final.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.dialects.base import Observation
from airflow_hpc_provider.dialects.remote_shell import LogRead, quote
from airflow_hpc_provider.jobs import JobState, JobStatus

# Native state -> shared state. Anything else maps to UNKNOWN (and is logged by the poller).
SLURM_STATES: Mapping[str, JobState] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUE_HOLD": JobState.HELD,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.HELD,
    "RUNNING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.COMPLETING,
    "COMPLETING": JobState.COMPLETING,
    "SUSPENDED": JobState.SUSPENDED,
    "STOPPED": JobState.SUSPENDED,
    "REQUEUED": JobState.REQUEUED,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL,
    "PREEMPTED": JobState.PREEMPTED,
    "BOOT_FAIL": JobState.BOOT_FAIL,
    "DEADLINE": JobState.DEADLINE,
    "SPECIAL_EXIT": JobState.FAILED,
    "REVOKED": JobState.CANCELLED,
}

# Held jobs pend with one of these reasons; the shared state says so.
_HOLD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})

# The reasons Slurm gives for how a job ended (its FAIL_* reasons). Every other reason says why a
# job waited, and never explains a later state: sacct keeps the last one it saw (a held, then
# released and completed job still shows JobHeldUser), so it is shown only while the job waits.
ENDING_REASONS = frozenset(
    {
        "BadConstraints",
        "BurstBufferOperation",
        "DeadLine",
        "DependencyNeverSatisfied",
        "InactiveLimit",
        "InvalidAccount",
        "InvalidQOS",
        "JobLaunchFailure",
        "NodeDown",
        "NonZeroExitCode",
        "OutOfMemory",
        "PartitionDown",
        "RaisedSignal",
        "SystemFailure",
        "TimeLimit",
    }
)
_WAITING = frozenset({JobState.PENDING, JobState.HELD})

# How a job array's elements (1234_7, 1234_[2-9]) and a heterogeneous job's components (1234+0)
# are named: squeue lists them when asked for the id sbatch printed.
_COMPONENT = re.compile(r"^(\d+)[_+]")
MULTI_JOB_REASON = "job array or heterogeneous job"

# JobID is the raw id (an array's elements have ids of their own, 1234 being one of them);
# JobArrayID is the name: 1234_7 for an array element, 1234+0 for a het job's component.
SQUEUE_FIELDS = "JobID:|,State:|,Reason:|,NodeList:|,exit_code:|,TimeUsed:|,JobArrayID:|"
# JobID last: an array element's name (1234_7, its steps 1234_7.batch), where JobIDRaw is its raw id.
SACCT_FIELDS = "JobIDRaw,State,ExitCode,Reason,Elapsed,NodeList,MaxRSS,JobID"

# --- polling --------------------------------------------------------------------------------------

# squeue states after which only sacct can say how the job ended.
_ACTIVE = "|".join(
    (
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "COMPLETING",
        "SUSPENDED",
        "STOPPED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESV_DEL_HOLD",
    )
)


# An awk function: the elements a squeue JobArrayID of pending array elements names,
# ``1234_[2-4,7%2]`` -> 1234_2 1234_3 1234_4 1234_7 in ``out[1..n]``, n returned (0 for any other name).
# Pending elements share their array's line; every element it holds is as alive as the line says.
RANGE_AWK = (
    "function elements(name, out,   b, r, p, e, m, j, i, n) { "
    'n = 0; if (name !~ /^[0-9]+_\\[/) return 0; b = name; sub(/_.*/, "", b); r = name; '
    'sub(/^[0-9]+_\\[/, "", r); sub(/[]%].*/, "", r); m = split(r, p, ","); '
    'for (j = 1; j <= m; j++) { if (split(p[j], e, "-") == 2) { for (i = e[1] + 0; i <= e[2] + 0; i++) '
    'out[++n] = b "_" i } else out[++n] = b "_" p[j] } return n } '
)


def poll_script(token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str:
    """squeue for every id; sacct only for the ids squeue no longer shows as active; then the logs.

    An id may name an array element (``1234_7``): squeue and sacct are asked for it by that name
    and their answers are read back under it (see :func:`parse_poll`)."""
    return remote_shell.poll_script(token, poll_body(token, job_ids), reads)


def poll_body(token: str, job_ids: Sequence[str]) -> str:
    """The squeue and sacct sections of :func:`poll_script` (also asked by the PBS dialect for
    the elements of the Torque-compatible wrappers around Slurm)."""
    ids = ",".join(job_ids)
    body = remote_shell.section(token, "squeue", f"squeue -h -t all -j {quote(ids)} -O '{SQUEUE_FIELDS}'")
    body += (
        f"_done=$(printf '%s\\n' \"$_r\" | awk -F'|' -v ids={quote(ids)} "
        f"'{RANGE_AWK}"
        'BEGIN { n = split(ids, a, ","); for (i = 1; i <= n; i++) w[a[i]] = 1 } '
        f"$2 ~ /^({_ACTIVE})$/ {{ delete w[$1]; delete w[$7]; m = elements($7, el); "
        "for (j = 1; j <= m; j++) delete w[el[j]] } "
        'END { s = ""; for (k in w) s = s (s == "" ? "" : ",") k; print s }\')\n'
        'if [ -n "$_done" ]; then\n'
        + remote_shell.section(token, "sacct", f'sacct -n -P -j "$_done" -o {SACCT_FIELDS}')
        + "fi\n"
    )
    return body


@dataclass(frozen=True)
class SlurmObservation:
    """What one poll learned of one job: squeue's live view and sacct's record, either may be missing."""

    queue: JobStatus | None
    accounting: JobStatus | None


@dataclass(frozen=True)
class SlurmPoll:
    observations: dict[str, SlurmObservation]
    accounting_available: bool
    errors: tuple[str, ...]

    # squeue's lines and what each meant, handed to the next poll's parse as ``known_lines``.
    squeue_lines: dict[str, JobStatus] = field(default_factory=dict)


def parse_poll(
    sections: Mapping[str, tuple[int, str]],
    job_ids: Sequence[str],
    known_lines: Mapping[str, JobStatus] | None = None,
) -> SlurmPoll:
    errors: list[str] = []
    lines: dict[str, JobStatus] = {}
    accounting: dict[str, JobStatus] = {}
    accounting_available = True
    if "squeue" in sections:
        rc, text = sections["squeue"]
        if rc == 0:
            lines = parse_squeue_lines(text, known_lines)
        elif "Invalid job id specified" not in text:
            errors.append(f"squeue exited {rc}: {text.strip()!r}")
    if "sacct" in sections:
        rc, text = sections["sacct"]
        if rc == 0:
            accounting = parse_sacct(text)
        else:
            accounting_available = "accounting storage is disabled" not in text
            if accounting_available:
                errors.append(f"sacct exited {rc}: {text.strip()!r}")
    queue = {status.job_id: status for status in lines.values()}
    queue.update(_elements(lines.items(), job_ids))
    observations = {
        job_id: SlurmObservation(queue=queue.get(job_id), accounting=accounting.get(job_id)) for job_id in job_ids
    }
    for job_id, parts in _components(lines.items()).items():
        if job_id in observations:
            observations[job_id] = SlurmObservation(queue=multi_job_status(job_id, parts), accounting=None)
    return SlurmPoll(observations, accounting_available, tuple(errors), lines)


def _elements(lines: Iterable[tuple[str, JobStatus]], job_ids: Sequence[str]) -> dict[str, JobStatus]:
    """The watched array elements squeue answered for, by their names (``1234_7``): an element has
    a line of its own once it started (named ``1234_7``, its JobID a raw id of its own), and shares
    its array's line while it pends (named by the range, ``1234_[2-4]``)."""
    wanted = {job_id for job_id in job_ids if "_" in job_id}
    if not wanted:
        return {}
    found: dict[str, JobStatus] = {}
    for line, status in lines:
        fields = line.split("|")
        name = fields[6].strip() if len(fields) > 6 else ""
        for element in element_names(name):
            if element in wanted:
                found[element] = replace(status, job_id=element)
    return found


_RANGE_NAME = re.compile(r"^(\d+)_\[([0-9,\-]+)(?:%\d+)?\]$")


def element_names(name: str) -> list[str]:
    """The elements a squeue JobArrayID names: ``1234_7`` one, ``1234_[2-4,7%2]`` four, else none."""
    if re.fullmatch(r"\d+_\d+", name):
        return [name]
    match = _RANGE_NAME.match(name)
    if not match:
        return []
    names: list[str] = []
    for part in match.group(2).split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            names.extend(f"{match.group(1)}_{index}" for index in range(int(first), int(last or first) + 1))
    return names


def _components(lines: Iterable[tuple[str, JobStatus]]) -> dict[str, list[tuple[str, JobStatus]]]:
    """squeue's lines for array elements and het job components, by the id sbatch printed and
    by the element's own raw id (which a retry's adoption search sees: squeue's JobID is raw)."""
    found: dict[str, list[tuple[str, JobStatus]]] = {}
    for line, status in lines:
        if "_" in line or "+" in line:  # a cheap test first: a thousand lines a poll
            fields = line.split("|")
            name = fields[6].strip() if len(fields) > 6 else ""
            match = _COMPONENT.match(name)
            if match:
                found.setdefault(match.group(1), []).append((name, status))
                if status.job_id != match.group(1):
                    found.setdefault(status.job_id, []).append((name, status))
    return found


def multi_job_status(job_id: str, parts: Sequence[tuple[str, JobStatus]]) -> JobStatus:
    """A final FAILED for a submission that became many jobs: never a success on one's word.

    Arrays are refused when the task is parsed; one that got through (an ``SBATCH_ARRAY_INX`` in
    the login node's own shell start-up files, say) is failed at its first poll, naming its parts.
    """
    shown = ", ".join(f"{name} {status.native_state}" for name, status in sorted(parts)[:5])
    more = f" and {len(parts) - 5} more" if len(parts) > 5 else ""
    return JobStatus(
        job_id=job_id,
        state=JobState.FAILED,
        native_state="FAILED",
        reason=(
            f"{MULTI_JOB_REASON}: Slurm job {job_id} is {shown}{more}; this provider follows single "
            "jobs and never reports a success on one element's word (is SBATCH_ARRAY_INX set on the login node?)"
        ),
    )


def is_multi_job(status: JobStatus) -> bool:
    return bool(status.reason and status.reason.startswith(MULTI_JOB_REASON + ":"))


def parse_squeue(text: str) -> dict[str, JobStatus]:
    """squeue output -> status per job id."""
    return {status.job_id: status for status in parse_squeue_lines(text).values()}


def parse_squeue_lines(text: str, known: Mapping[str, JobStatus] | None = None) -> dict[str, JobStatus]:
    """squeue output -> status per line. ``known`` holds lines parsed before: a queued job's line
    repeats poll after poll, and parsing it again was most of a poll's CPU with a thousand jobs."""
    statuses: dict[str, JobStatus] = {}
    for line in text.splitlines():
        if known is not None and line in known:
            statuses[line] = known[line]
            continue
        fields = line.split("|")
        if len(fields) < 6 or not fields[0].strip():
            continue
        job_id, native, reason, nodes, exit_code, used = (f.strip() for f in fields[:6])
        state = map_state(native, reason)
        # squeue's exit_code is the raw wait status (exit 3 -> 768, OOM -> 253, SIGTERM -> 15);
        # decode it the way sacct prints ExitCode (code:signal).
        raw = int(exit_code) if state.is_terminal and exit_code.isdigit() else None
        statuses[line] = JobStatus(
            job_id=job_id,
            state=state,
            native_state=native,
            reason=reason_for(state, reason),
            nodes=nodes or None,
            exit_code=None if raw is None else (raw >> 8) & 0xFF,
            signal=None if raw is None else raw & 0x7F,
            elapsed=parse_elapsed(used),
        )
    return statuses


def parse_sacct(text: str) -> dict[str, JobStatus]:
    """Allocation rows give the state; ``.batch``/step rows add the peak memory."""
    rows: dict[str, JobStatus] = {}
    peak_kb: dict[str, float] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 7 or not fields[0].strip():
            continue
        raw_id, native, exit_code, reason, elapsed, nodes, max_rss = (f.strip() for f in fields[:7])
        # An array element is known by its name (1234_7), which the watcher asked for.
        name = fields[7].strip() if len(fields) > 7 else ""
        if re.fullmatch(r"\d+_\d+(\.\S+)?", name):
            raw_id = name
        job_id, _, step = raw_id.partition(".")
        if step:
            rss = parse_rss_kb(max_rss)
            if rss is not None:
                peak_kb[job_id] = max(peak_kb.get(job_id, 0.0), rss)
            continue
        code, signal = parse_exit_code(exit_code)
        word = native.split(" ")[0]  # 'CANCELLED by 1001' -> CANCELLED
        state = map_state(word, reason)
        rows[job_id] = JobStatus(
            job_id=job_id,
            state=state,
            native_state=native,
            reason=reason_for(state, reason),
            nodes=None if nodes in ("", "None assigned") else nodes,
            exit_code=code if state.is_terminal else None,
            signal=signal if state.is_terminal else None,
            elapsed=parse_elapsed(elapsed),
        )
    return {job_id: _with_rss(status, peak_kb.get(job_id)) for job_id, status in rows.items()}


def _with_rss(status: JobStatus, rss_kb: float | None) -> JobStatus:
    if rss_kb is None:
        return status
    return JobStatus(**{**status.__dict__, "max_rss_mb": round(rss_kb / 1024, 1)})


def reason_for(state: JobState, reason: str | None) -> str | None:
    """The reason, if it belongs to ``state``: why a waiting job waits, or how a job ended.

    A success has no reason; a running or finished job keeps only one of :data:`ENDING_REASONS`.
    """
    if not reason or reason in ("None", "(null)"):
        return None
    if state in _WAITING:
        return reason
    if state is JobState.COMPLETED:
        return None
    return reason if reason in ENDING_REASONS else None


def map_state(native: str, reason: str | None = None) -> JobState:
    state = SLURM_STATES.get(native.upper(), JobState.UNKNOWN)
    if state is JobState.PENDING and reason in _HOLD_REASONS:
        return JobState.HELD
    return state


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """``'3:0'`` -> (3, 0); an empty or odd field stays unknown, never 0."""
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not match:
        return None, None
    return int(match.group(1)), int(match.group(2))


def parse_elapsed(text: str) -> timedelta | None:
    """``1-02:03:04``, ``02:03:04``, ``03:04``, ``3:04.123`` -> timedelta; anything else None."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)(?:\.\d+)?", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_rss_kb(text: str) -> float | None:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text.strip())
    if not match:
        return None
    factor = {"": 1 / 1024, "K": 1, "M": 1024, "G": 1024**2, "T": 1024**3}[match.group(2)]
    return float(match.group(1)) * factor


def observe(seen: SlurmObservation, accounting_available: bool) -> Observation:
    """Combine squeue's and sacct's view of one job into what the poller may conclude.

    Only sacct's record of a terminal state is final; squeue's terminal state is final only where
    the cluster keeps no accounting at all.
    """
    queue, record = seen.queue, seen.accounting
    if queue is not None and is_multi_job(queue):
        return Observation(queue, final=True)
    if queue is not None and not queue.state.is_terminal:
        return Observation(queue, final=False)
    if record is not None and record.state.is_terminal:
        return Observation(record, final=True)
    if queue is not None:
        return Observation(queue, final=not accounting_available)
    return Observation(record, final=False)
