"""Reading Grid Engine's answers: ``qstat -xml`` lines, ``qstat -j`` error reasons and ``qacct -j``
records, into the shared :class:`~airflow_hpc_provider.jobs.JobStatus`.

Pure functions, tested on output recorded on the test cluster (tests/fixtures/sge); the facts
they rely on are listed in :mod:`airflow_hpc_provider.dialects.sge`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from xml.etree import ElementTree

from airflow_hpc_provider.jobs import JobState, JobStatus

# Every job state qstat documents (sge_status(5)), letters combined: d(eletion), E(rror), h(old),
# r(unning), R(estarted), s/S/T (suspended by the user, the queue, a threshold), t(ransferring),
# q(ueued) w(aiting). Anything else maps to UNKNOWN (and is logged by the poller).
SGE_STATES: Mapping[str, JobState] = {
    "qw": JobState.PENDING,
    "hqw": JobState.HELD,
    "hRwq": JobState.HELD,
    "Rq": JobState.REQUEUED,
    "r": JobState.RUNNING,
    "t": JobState.RUNNING,  # being handed to its execution host: starts within moments
    "Rr": JobState.RUNNING,
    "Rt": JobState.RUNNING,
    **dict.fromkeys(("s", "ts", "S", "tS", "T", "tT", "Rs", "Rts", "RS", "RtS", "RT", "RtT"), JobState.SUSPENDED),
    # In error, the job waits for `qmod -cj` (or a qdel): nothing ends it by itself, like a hold.
    **dict.fromkeys(("Eqw", "Ehqw", "EhRqw"), JobState.HELD),
    # A qdel is under way: the job is on its way out but not gone (qacct will say how it ended).
    **dict.fromkeys(("dr", "dt", "dRr", "dRt", "ds", "dS", "dT", "dRs", "dRS", "dRT"), JobState.COMPLETING),
}

# The `failed` codes that decide a state of their own; the others mean the job could not start.
_FAILED_OK, _FAILED_RESCHEDULED, _FAILED_LIMIT, _FAILED_SIGNAL = 0, 25, 37, 100
_SIGNAL_BASE = 128


def parse_qstat_xml(text: str) -> dict[str, JobStatus]:
    """``qstat -xml`` -> status per job id (an array job: its first task's line)."""
    return parse_queue(text).jobs


@dataclass(frozen=True)
class Queue:
    """What ``qstat -xml`` listed. ``jobs``: by job number (an array job: its first line), and by
    element id ``<job>.<task>`` for each task with a line of its own (started ones). ``pending``:
    per job number, its lines for tasks not started, each a task list (``1-20:1``, ``1,4``,
    ``1-5:2``) read on demand, never expanded: another array of the user's may hold 75,000."""

    jobs: dict[str, JobStatus] = field(default_factory=dict)
    pending: dict[str, list[tuple[str, JobStatus]]] = field(default_factory=dict)

    def status(self, job_id: str) -> JobStatus | None:
        """A plain job by its number, an array element by ``<job>.<task>`` (its own line, else the
        pending line whose task list holds it, as that element)."""
        if job_id in self.jobs:
            return self.jobs[job_id]
        number, dot, task = job_id.partition(".")
        if not dot or not task.isdigit():
            return None
        for tasks, status in self.pending.get(number, ()):
            if in_task_list(int(task), tasks):
                return replace(status, job_id=job_id)
        return None


def in_task_list(task: int, tasks: str) -> bool:
    """Whether Grid Engine's task list (``1-20:1``, ``1,4``, ``3``, ``1-5:2,9``) holds ``task``."""
    for part in tasks.split(","):
        span, _, step_text = part.strip().partition(":")
        first_text, _, last_text = span.partition("-")
        if not first_text.isdigit() or not (last_text or first_text).isdigit():
            continue
        first, last = int(first_text), int(last_text or first_text)
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else 1
        if first <= task <= last and (task - first) % step == 0:
            return True
    return False


def parse_queue(text: str) -> Queue:
    """``qstat -xml`` -> :class:`Queue`."""
    start, end = text.find("<?xml"), text.rfind("</job_info>")
    if start < 0 or end < 0:
        raise ValueError(f"no qstat XML document in {text[:200]!r}")
    try:
        root = ElementTree.fromstring(text[start : end + len("</job_info>")])
    except ElementTree.ParseError as error:
        raise ValueError(f"qstat XML is not readable: {error}") from None
    queue = Queue()
    for job in root.iter("job_list"):
        job_id = (job.findtext("JB_job_number") or "").strip()
        if not job_id:
            continue
        native = (job.findtext("state") or "").strip()
        node = (job.findtext("queue_name") or "").strip().partition("@")[2] or None
        tasks = (job.findtext("tasks") or "").strip()
        state = SGE_STATES.get(native, JobState.UNKNOWN)
        reason = "error state (qmod -cj clears it, qdel removes the job)" if "E" in native else None
        status = JobStatus(job_id=job_id, state=state, native_state=native or "?", reason=reason, nodes=node)
        queue.jobs.setdefault(job_id, status)
        if tasks.isdigit():
            queue.jobs[f"{job_id}.{tasks}"] = replace(status, job_id=f"{job_id}.{tasks}")
        elif tasks:
            queue.pending.setdefault(job_id, []).append((tasks, status))
    return queue


_ERROR_REASON = re.compile(r"^error reason\s+(\d+):\s*(.*)$")


def parse_error_reasons(text: str) -> dict[str, str]:
    """``qstat -j`` lines kept by the poll -> the first error reason per job id and per task."""
    reasons: dict[str, str] = {}
    job_id = ""
    for line in text.splitlines():
        if line.startswith("job_number:"):
            job_id = line.split(":", 1)[1].strip()
            continue
        match = _ERROR_REASON.match(line)
        if match and job_id:
            # The number is the task's: an array element's reason is also kept as <job>.<task>.
            reasons.setdefault(job_id, match.group(2).strip())
            reasons.setdefault(f"{job_id}.{match.group(1)}", match.group(2).strip())
    return reasons


_NOT_FOUND = re.compile(r"^error: job id (\d+) not found")


def parse_qacct(text: str) -> tuple[dict[str, dict[str, str]], set[str], list[str]]:
    """``qacct -j`` output for several ids -> (the last record per job id, ids qacct does not know,
    other lines worth telling: a missing accounting file, say). An array's tasks each have a
    record (``taskid``): they are kept as ``<job>.<task>``; a plain job's says ``undefined``."""
    records: dict[str, dict[str, str]] = {}
    unknown: set[str] = set()
    notices: list[str] = []
    current: dict[str, str] | None = None

    def keep() -> None:
        # A later run of the same job (or task) replaces an earlier one.
        if current and "jobnumber" in current:
            task = current.get("taskid", "")
            records[f"{current['jobnumber']}.{task}" if task.isdigit() else current["jobnumber"]] = current

    for line in text.splitlines():
        if line.startswith("====="):
            keep()
            current = {}
            continue
        missing = _NOT_FOUND.match(line)
        if missing:
            keep()
            unknown.add(missing.group(1))
            current = None
            continue
        key, _, value = line.partition(" ")
        if current is not None and re.fullmatch(r"[a-z_]+", key):
            current[key] = value.strip()
        elif line.strip():
            notices.append(f"qacct: {line.strip()}")
    keep()
    return records, unknown, notices


def status_from_record(record: Mapping[str, str], *, cancelled: bool = False) -> JobStatus:
    """A qacct record -> the final status. Success is ``failed 0`` with exit status 0, nothing else.

    ``cancelled``: this provider deleted the job (:func:`cancel_script`'s marker), which turns a
    kill by signal or a failure to start into CANCELLED; a job that ended on its own or ran into a
    limit before the qdel keeps that outcome.
    """
    task = record.get("taskid", "")
    job_id = record.get("jobnumber", "?") + (f".{task}" if task.isdigit() else "")
    code_text, _, words = record.get("failed", "").partition(":")
    failed = int(code_text) if code_text.strip().isdigit() else None
    exit_match = re.match(r"\s*(-?\d+)", record.get("exit_status", ""))
    exit_status = int(exit_match.group(1)) if exit_match else None
    elapsed = parse_seconds(record.get("ru_wallclock", ""))
    said = f"{failed}: {words.strip()}" if words.strip() else f"failed {failed}"
    signal = exit_status - _SIGNAL_BASE if exit_status is not None and exit_status > _SIGNAL_BASE else None
    exit_code: int | None = exit_status
    reason: str | None = None
    if failed is None or exit_status is None:
        state, reason, signal = JobState.FAILED, "the accounting record has no failed/exit_status field", None
    elif failed == _FAILED_OK:
        state, signal = (JobState.COMPLETED if exit_status == 0 else JobState.FAILED), None
    elif failed == _FAILED_LIMIT:
        state, reason = limit_state(record.get("category", ""), elapsed), said
    elif failed == _FAILED_SIGNAL and signal is not None:
        state = JobState.CANCELLED if cancelled else JobState.FAILED
        by = "deleted by this provider (qdel)" if cancelled else "a qdel, a memory limit or the kernel"
        reason = f"killed by signal {signal}: {by}"
    elif failed == _FAILED_RESCHEDULED:
        state, reason, signal = JobState.REQUEUED, said, None
    else:  # the job could not start (or the shepherd failed): its exit status means nothing
        state, reason, exit_code, signal = (JobState.CANCELLED if cancelled else JobState.FAILED), said, None, None
    return JobStatus(
        job_id=job_id,
        state=state,
        native_state=state.value,
        reason=reason,
        nodes=record.get("hostname") or None,
        exit_code=exit_code if state.is_terminal else None,
        signal=signal,
        elapsed=elapsed,
        max_rss_mb=parse_maxrss_mb(record.get("ru_maxrss", "")),
    )


def limit_state(category: str, elapsed: timedelta | None) -> JobState:
    """Failed 37 names three limits: h_rt if the job asked for it and ran that long, h_vmem if it
    asked for memory, else TIMEOUT (h_cpu, or a queue's own h_rt, which no category shows)."""
    limits = parse_category_limits(category)
    h_rt = parse_seconds(limits.get("h_rt", ""))
    if h_rt is not None and elapsed is not None and elapsed >= h_rt - timedelta(seconds=1):
        return JobState.TIMEOUT
    if "h_vmem" in limits:
        return JobState.OUT_OF_MEMORY
    return JobState.TIMEOUT


def parse_category_limits(category: str) -> dict[str, str]:
    """``-q all.q -l h_rt=3,h_vmem=1G -pe smp 2`` -> ``{"h_rt": "3", "h_vmem": "1G"}``."""
    limits: dict[str, str] = {}
    words = category.split()
    for flag, value in itertools.pairwise(words):
        if flag == "-l":
            for item in value.split(","):
                name, _, amount = item.partition("=")
                limits[name] = amount
    return limits


def parse_seconds(text: str) -> timedelta | None:
    """``11s``, ``11``, ``4.000``, ``1:02:03`` -> timedelta; anything else None."""
    text = text.strip().removesuffix("s")
    match = re.fullmatch(r"(?:(?:(\d+):)?(\d+):)?(\d+(?:\.\d+)?)", text)
    if not match:
        return None
    hours, minutes = (int(part) if part else 0 for part in match.groups()[:2])
    return timedelta(hours=hours, minutes=minutes, seconds=float(match.group(3)))


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_maxrss_mb(text: str) -> float | None:
    """qacct's ``ru_maxrss`` (KiB printed as if bytes, see the module notes) -> MiB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", text.strip())
    if not match:
        return None
    kib = float(match.group(1)) * _UNITS[match.group(2)]
    return round(kib / 1024, 1)
