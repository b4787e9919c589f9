"""Slurm, as pure functions: the batch script, the submit/poll/cancel scripts, and reading the answers.

Nothing here does I/O, so every function is tested with golden files and recorded real output.
Facts it relies on (Slurm 22.05, checked on the test cluster):

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
from airflow_hpc_provider.dialects.base import Observation, PollReport
from airflow_hpc_provider.dialects.remote_shell import LogRead, quote
from airflow_hpc_provider.dialects.slurm_resubmit import SignalBeforeTimeout
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobState, JobStatus, format_duration

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

# Jobs a retry may adopt (and that count against max_concurrent_jobs): alive and not on their way out.
ALIVE_STATES = "PENDING,CONFIGURING,RUNNING,SUSPENDED,REQUEUED,REQUEUE_HOLD,REQUEUE_FED,RESIZING,STOPPED"

# Options this provider owns: it must know where output goes to stream it, and the comment is the key.
RESERVED_OPTIONS = ("--output", "--error", "--comment", "--parsable", "-o", "-e", "--wrap")

# JobID is the raw id (an array's elements have ids of their own, 1234 being one of them);
# JobArrayID is the name: 1234_7 for an array element, 1234+0 for a het job's component.
# RestartCnt counts the times Slurm started the job again (requeue, preemption).
SQUEUE_FIELDS = "JobID:|,State:|,Reason:|,NodeList:|,exit_code:|,TimeUsed:|,JobArrayID:|,RestartCnt:|"
SACCT_FIELDS = "JobIDRaw,State,ExitCode,Reason,Elapsed,NodeList,MaxRSS"


def render_script(spec: JobSpec, *, script: str | None = None, near_limit: SignalBeforeTimeout | None = None) -> str:
    """The batch script: shebang, ``#SBATCH`` resource lines, env names, setup lines, the command.

    ``script`` (a whole script by the user) keeps its shebang and its own ``#SBATCH`` lines; ours are
    added right after the shebang, and the setup lines go after the script's directive block.
    ``near_limit``: the command (or the script's body) runs under a trap for the signal before the
    time limit, which may requeue the job (:mod:`airflow_hpc_provider.dialects.slurm_resubmit`).
    """
    options = resource_options(spec) + (near_limit.directives() if near_limit else [])
    directives = [f"#SBATCH {option}\n" for option in options]
    env_note = (
        f"# environment from Airflow (values passed by sbatch, not written here): {' '.join(spec.env_names)}\n"
        if spec.env_names
        else ""
    )
    setup = "".join(f"{line}\n" for line in spec.setup)
    if script is None:
        shebang = "#!/bin/bash -l\n" if spec.login_shell else "#!/bin/bash\n"
        body = spec.command if spec.command.endswith("\n") else spec.command + "\n"
        if near_limit:
            body = near_limit.wrap(body)
        return shebang + "".join(directives) + env_note + setup + body
    lines = script.splitlines(keepends=True)
    if lines and lines[0].startswith("#!"):
        shebang, lines = lines[0], lines[1:]
    else:
        shebang = "#!/bin/bash -l\n" if spec.login_shell else "#!/bin/bash\n"
    header_end = 0
    while header_end < len(lines) and (lines[header_end].startswith("#") or not lines[header_end].strip()):
        header_end += 1
    header, rest = "".join(lines[:header_end]), "".join(lines[header_end:])
    # A script of a shebang or directives only, without a final newline: never glue our lines on.
    if not shebang.endswith("\n"):
        shebang += "\n"
    if header and not header.endswith("\n"):
        header += "\n"
    if near_limit:
        rest = near_limit.wrap(rest)
    return shebang + "".join(directives) + header + env_note + setup + rest


def resource_options(spec: JobSpec) -> list[str]:
    res = spec.resources
    options: list[str] = []
    if res.partition:
        options.append(f"--partition={res.partition}")
    if res.account:
        options.append(f"--account={res.account}")
    if res.nodes:
        options.append(f"--nodes={res.nodes}")
    if res.cpus:
        options.append(f"--cpus-per-task={res.cpus}")
    if res.memory_mb:
        options.append(f"--mem={res.memory_mb}M")
    if res.time_limit:
        options.append(f"--time={slurm_time(res.time_limit)}")
    if res.gpus:
        options.append(f"--gpus={res.gpus}")
    if res.gres:
        options.append(f"--gres={res.gres}")
    options.extend(spec.extra_directives)
    return options


def slurm_time(limit: timedelta) -> str:
    # Slurm rounds a limit with seconds up to the next minute; say what it will do.
    # Whole microseconds, rounded up: 0.5 s must not become '00:00:00', which Slurm reads as no limit.
    minutes = -(-limit // timedelta(minutes=1))
    return format_duration(timedelta(minutes=minutes))


def log_path(log_dir: str, key: JobKey, job_id: str) -> str:
    return f"{log_dir.rstrip('/')}/{key.task_digest}-{job_id}.log"


def cursor_path(log_dir: str, key: JobKey, job_id: str) -> str:
    return f"{log_dir.rstrip('/')}/{key.task_digest}-{job_id}.cursor"


def jobs_record(log_dir: str, key: JobKey) -> str:
    """The task instance's submissions, one job id a line, appended by the submit script."""
    return f"{log_dir.rstrip('/')}/{key.task_digest}.jobs"


@dataclass(frozen=True)
class SubmitOutcome:
    """``job_id`` None means nothing was submitted: the cluster already runs ``busy_jobs`` of ours.

    ``adopted`` with ``ended``: an earlier try's job that finished while no one watched it; its
    outcome (and output) decides this try.
    """

    job_id: str | None
    adopted: bool
    state: str | None
    busy_jobs: int | None = None

    @property
    def ended(self) -> bool:
        return self.adopted and self.state is not None and map_state(self.state.split(" ")[0]).is_terminal


def submit_script(
    spec: JobSpec,
    batch_script: str,
    *,
    key: JobKey,
    log_dir: str,
    env: Mapping[str, str],
    max_concurrent_jobs: int | None = None,
) -> str:
    """One round trip: take a per-task lock, adopt an earlier try's job, or submit a new one.

    The lock (``flock`` on a file beside the logs) closes the race of two workers submitting the
    same task at once. Every submission is appended to the task instance's record
    (:func:`jobs_record`) before its id is printed, so a worker that dies at any point leaves its
    job findable; a retry asks the scheduler about those ids only, never about all the user's jobs.
    The newest recorded job no trigger watched (see ``WatchedJob.claimed_by_trigger``) is adopted,
    running or ended: a job that finished while its worker was dead is not run again, its outcome
    decides the retry. With ``max_concurrent_jobs``, a new job is only submitted while fewer of this
    provider's jobs are queued or running for this user.
    """
    log_dir_arg = remote_shell.home_relative(log_dir)
    output = remote_shell.home_relative(f"{log_dir.rstrip('/')}/{key.task_digest}-%j.log")
    sbatch = [
        "sbatch",
        "--parsable",
        f"--job-name={quote(spec.job_name)}",
        f"--comment={quote(key.tag)}",
        f"--output={output}",
        # A requeued job starts again with the same output file: appended to, never truncated, so
        # no line of an earlier run is lost before it was read (see ClusterPoller's run markers).
        "--open-mode=append",
    ]
    if spec.working_dir:
        sbatch.append(f"--chdir={quote(spec.working_dir)}")
    # One lock per task, or one per user when a cap is set: the count and the submission must not
    # interleave with another task's, or two tasks could both pass the cap.
    lock = remote_shell.home_relative(
        f"{log_dir.rstrip('/')}/{'submit' if max_concurrent_jobs is not None else key.task_digest}.lock"
    )
    record = remote_shell.home_relative(jobs_record(log_dir, key))
    ours = quote(JobKey.PREFIX + ":")
    claimed = remote_shell.home_relative(f"{log_dir.rstrip('/')}/{key.task_digest}-")
    limit = ""
    if max_concurrent_jobs is not None:
        limit = (
            f"  _q=$(squeue -h -u \"$(id -un)\" -t {ALIVE_STATES} -O 'JobID:|,Comment:|') || exit 1\n"
            f"  _busy=$(printf '%s\\n' \"$_q\" | awk -F'|' -v p={ours} 'index($2, p) == 1' | wc -l)\n"
            f'  if [ "$_busy" -ge {int(max_concurrent_jobs)} ]; then printf \'BUSY %s\\n\' "$_busy"; exit 0; fi\n'
        )
    return (
        f"[ -d {log_dir_arg} ] || mkdir -p -- {log_dir_arg} || exit 1\n"  # a test is a builtin, mkdir a process
        f"exec 9>>{lock}\n"
        "flock -w 120 9 || { echo 'could not take the submission lock' >&2; exit 1; }\n"
        # This task instance's earlier jobs, newest first, less those a trigger watched.
        "_mine=\n"
        f"if [ -f {record} ]; then\n"
        "  for _j in $(awk 'NF == 1 && $1 ~ /^[0-9]+(_[0-9]+)?$/ { a[n++] = $1 } "
        f"END {{ for (i = n - 1; i >= 0; i--) print a[i] }}' {record}); do\n"
        f'    [ -e {claimed}"$_j".cursor.watched ] || _mine="$_mine${{_mine:+,}}$_j"\n'
        "  done\n"
        "fi\n"
        "_pick=\n"
        'if [ -n "$_mine" ]; then\n'
        # squeue knows every live job and, for a while, ended ones; accounting knows older ones.
        # Unknown ids are an answer; any other failure stops the submission (submitting blind
        # could run a live job, or a finished one, twice).
        "  _k=$(squeue -h -t all -j \"$_mine\" -O 'JobID:|,State:|' 2>&1); _rc=$?\n"
        '  case $_rc:$_k in 0:*|*"Invalid job id"*) ;; '
        '*) printf \'squeue exited %s: %s\\n\' "$_rc" "$_k" >&2; exit 1;; esac\n'
        f"  _pick=$(printf '%s\\n' \"$_k\" | awk -F'|' -v ids=\"$_mine\" {quote(_NEWEST_KNOWN_AWK)})\n"
        '  if [ -z "$_pick" ]; then\n'
        '    _k=$(sacct -n -X -P -j "$_mine" -o JobIDRaw,State 2>&1); _rc=$?\n'
        '    case $_rc:$_k in 0:*|*"accounting storage is disabled"*) ;; '
        '*) printf \'sacct exited %s: %s\\n\' "$_rc" "$_k" >&2; exit 1;; esac\n'
        f"    _pick=$(printf '%s\\n' \"$_k\" | awk -F'|' -v ids=\"$_mine\" {quote(_NEWEST_KNOWN_AWK)})\n"
        "  fi\n"
        "fi\n"
        'if [ -n "$_pick" ]; then\n'
        "  _id=${_pick%% *}\n"
        '  printf \'ADOPTED %s\\nSTATE %s\\n\' "$_id" "${_pick#* }"\n'
        "else\n"
        + limit
        + remote_shell.export_lines(env)
        + "  _id=$("
        + remote_shell.heredoc(batch_script, feed=" ".join(sbatch))
        + ") || exit $?\n"
        "  _id=${_id%%;*}\n"
        # Recorded before it is printed: a link that drops now cannot lose the job.
        f'  printf \'%s\\n\' "$_id" >> {record} || echo "could not record job $_id in" {record} >&2\n'
        # No squeue for the new job's state: it is all but always PENDING, and asking costs the
        # login node two processes and slurmctld an RPC for every submission.
        "  printf 'SUBMITTED %s\\n' \"$_id\"\n"
        "fi\n"
    )


# Reads "<id>|<state>..." lines; prints "<id> <state>" of the first id in the comma list ``ids``
# (newest first) that the scheduler knows.
_NEWEST_KNOWN_AWK = r"""
BEGIN { n = split(ids, order, ",") }
{ id = $1; gsub(/ /, "", id); state = $2; sub(/^ +/, "", state); sub(/ .*$/, "", state) }
id != "" && state != "" { known[id] = state }
END { for (i = 1; i <= n; i++) if (order[i] in known) { print order[i], known[order[i]]; exit } }
"""


_SUBMITTED_ID = re.compile(r"\d+(_\d+)?")


def parse_submit_output(stdout: str, job_id_form: re.Pattern[str] = _SUBMITTED_ID) -> SubmitOutcome:
    """What a submit script printed (``ADOPTED``/``SUBMITTED`` id, ``STATE``, ``BUSY`` count); the
    other SSH-cluster dialects print the same words, with ids of their own ``job_id_form``."""
    job_id: str | None = None
    adopted = False
    state: str | None = None
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("ADOPTED", "SUBMITTED"):
            job_id, adopted = rest.strip(), word == "ADOPTED"
        elif word == "STATE":
            state = rest.strip() or None
        elif word == "BUSY":
            return SubmitOutcome(job_id=None, adopted=False, state=None, busy_jobs=int(rest))
    if not job_id or not job_id_form.fullmatch(job_id):
        raise ValueError(f"no job id in the submission's output: {stdout!r}")
    return SubmitOutcome(job_id=job_id, adopted=adopted, state=state)


def cancel_script(job_ids: Sequence[str]) -> str:
    return "scancel -- " + " ".join(quote(job_id) for job_id in job_ids) + "\n"


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


def poll_script(token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str:
    """squeue for every id; sacct only for the ids squeue no longer shows as active; then the logs."""
    ids = ",".join(job_ids)
    body = remote_shell.section(token, "squeue", f"squeue -h -t all -j {quote(ids)} -O '{SQUEUE_FIELDS}'")
    body += (
        f"_done=$(printf '%s\\n' \"$_r\" | awk -F'|' -v ids={quote(ids)} "
        '\'BEGIN { n = split(ids, a, ","); for (i = 1; i <= n; i++) w[a[i]] = 1 } '
        f"$2 ~ /^({_ACTIVE})$/ {{ delete w[$1] }} "
        'END { s = ""; for (k in w) s = s (s == "" ? "" : ",") k; print s }\')\n'
        'if [ -n "$_done" ]; then\n'
        + remote_shell.section(token, "sacct", f'sacct -n -P -j "$_done" -o {SACCT_FIELDS}')
        + "fi\n"
    )
    return remote_shell.poll_script(token, body, reads)


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
    # How often each job was started again (requeued), from squeue's RestartCnt.
    restarts: dict[str, int] = field(default_factory=dict)


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
    observations = {
        job_id: SlurmObservation(queue=queue.get(job_id), accounting=accounting.get(job_id)) for job_id in job_ids
    }
    for job_id, parts in _components(lines.items()).items():
        if job_id in observations:
            observations[job_id] = SlurmObservation(queue=multi_job_status(job_id, parts), accounting=None)
    restarts = {}
    for line, status in lines.items():
        count = restart_count(line)
        if count is not None:
            restarts[status.job_id] = count
    return SlurmPoll(observations, accounting_available, tuple(errors), lines, restarts)


def restart_count(squeue_line: str) -> int | None:
    """The RestartCnt field of one squeue line (the eighth), when squeue printed it."""
    fields = squeue_line.split("|")
    if len(fields) < 8 or not fields[7].strip().isdigit():
        return None
    return int(fields[7].strip())


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


class SlurmDialect:
    """The Slurm dialect as the poller sees it."""

    name = "Slurm"

    def __init__(self) -> None:
        # Last poll's squeue lines and what they meant; replaced every poll, so it never grows.
        self._squeue_lines: dict[str, JobStatus] = {}

    def poll_script(self, token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str:
        if not job_ids:
            return remote_shell.poll_script(token, "", reads)
        return poll_script(token, job_ids, reads)

    def read_poll(self, sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str]) -> PollReport:
        poll = parse_poll(sections, job_ids, self._squeue_lines)
        if poll.squeue_lines or "squeue" in sections:
            self._squeue_lines = poll.squeue_lines
        failure = next((error for error in poll.errors if error.startswith("squeue")), None)
        notices = tuple(error for error in poll.errors if not error.startswith("squeue"))
        observations = {
            job_id: replace(observe(seen, poll.accounting_available), restarts=poll.restarts.get(job_id))
            for job_id, seen in poll.observations.items()
        }
        return PollReport(observations=observations, failure=failure, notices=notices)

    def cancel_script(self, job_ids: Sequence[str]) -> str:
        return cancel_script(job_ids)
