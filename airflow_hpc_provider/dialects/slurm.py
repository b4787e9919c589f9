"""Slurm, as pure functions: the batch script, the submit and cancel scripts, and the dialect the
poller uses; the poll itself (squeue and sacct, and reading their answers) is in
:mod:`~airflow_hpc_provider.dialects.slurm_status`.

Nothing here does I/O, so every function is tested with golden files and recorded real output.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.dialects.base import PollReport
from airflow_hpc_provider.dialects.directives import default_shebang, is_posix_shell, split_user_script
from airflow_hpc_provider.dialects.remote_shell import LogRead, quote
from airflow_hpc_provider.dialects.slurm_resubmit import SignalBeforeTimeout
from airflow_hpc_provider.dialects.slurm_status import RANGE_AWK, map_state, observe, parse_poll, poll_script
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobStatus, format_duration

# Jobs a retry may adopt (and that count against max_concurrent_jobs): alive and not on their way out.
ALIVE_STATES = "PENDING,CONFIGURING,RUNNING,SUSPENDED,REQUEUED,REQUEUE_HOLD,REQUEUE_FED,RESIZING,STOPPED"

# The line a requeued job prints as the first of each run after the first (see RUN_MARKER_LINES).
RUN_MARKER = "--- run {run} of job {job_id} (requeued) ---"

# A requeued job (scontrol requeue, preemption or a node failure with requeue, the time-limit
# resubmission) starts again with the same output file, appended to (--open-mode=append), and with
# SLURM_RESTART_COUNT set. The job marks its new run itself, as its first output, so the marker sits
# at the exact byte where the run begins, however the provider's polls fall. The id is the one the
# provider watches: an array element's is <array>_<index>. The marker is a line of its own even
# when the run before was cut mid-line: the batch shell's stdout is the output file, whose last byte
# /proc/$$/fd/1 shows ($$ is the batch shell's, in the command substitution too); when that cannot
# be read (no /proc, stdout not a regular file: never under sbatch --output), a newline goes first
# anyway: an empty line at worst, never a marker glued to another run's line. POSIX sh, and safe
# under set -u and set -e.
RUN_MARKER_LINES = (
    "# airflow-hpc: a requeued run begins with a marker line of its own\n"
    'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] 2>/dev/null; then\n'
    "  _airflow_hpc_last=x\n"
    '  [ ! -f "/proc/$$/fd/1" ] || _airflow_hpc_last=$(tail -c 1 -- "/proc/$$/fd/1" 2>/dev/null) '
    "|| _airflow_hpc_last=x\n"
    '  [ -z "$_airflow_hpc_last" ] || echo\n'
    "  _airflow_hpc_job=${SLURM_JOB_ID-}\n"
    '  [ -z "${SLURM_ARRAY_JOB_ID-}" ] || _airflow_hpc_job=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID-}\n'
    "  printf '%s\\n' \"" + RUN_MARKER.format(run="$(( SLURM_RESTART_COUNT + 1 ))", job_id="$_airflow_hpc_job") + '"\n'
    "  unset _airflow_hpc_last _airflow_hpc_job\n"
    "fi\n"
)

# Options this provider owns: it must know where output goes to stream it, and the comment is the key.
RESERVED_OPTIONS = ("--output", "--error", "--comment", "--parsable", "-o", "-e", "--wrap")


def render_script(spec: JobSpec, *, script: str | None = None, near_limit: SignalBeforeTimeout | None = None) -> str:
    """The batch script: shebang, ``#SBATCH`` resource lines, env names, the run marker of a requeued
    job (:data:`RUN_MARKER_LINES`), setup lines, the command.

    ``script`` (a whole script by the user) keeps its shebang and its own ``#SBATCH`` lines; ours are
    added right after the shebang, and the run marker and the setup lines go after the script's
    directive block. A script for another interpreter than a POSIX-family shell (Python, csh) gets
    no run marker: its runs follow each other in the log unmarked.
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
        shebang = default_shebang(spec.login_shell)
        body = spec.command if spec.command.endswith("\n") else spec.command + "\n"
        if near_limit:
            body = near_limit.wrap(body)
        return shebang + "".join(directives) + env_note + RUN_MARKER_LINES + setup + body
    shebang, header, rest = split_user_script(script, spec.login_shell)
    if near_limit:
        rest = near_limit.wrap(rest)
    marker = RUN_MARKER_LINES if is_posix_shell(shebang) else ""
    return shebang + "".join(directives) + header + env_note + marker + setup + rest


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
        # no line of an earlier run is lost before it was read; each run after the first begins
        # with the job's own marker line (RUN_MARKER_LINES).
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
    limit = ""
    if max_concurrent_jobs is not None:
        # -r: one line per array element (pending elements otherwise share their array's line), so
        # the elements of mapped tasks' arrays count one each, as their jobs would have.
        limit = (
            f"  _q=$(squeue -h -r -u \"$(id -un)\" -t {ALIVE_STATES} -O 'JobID:|,Comment:|') || exit 1\n"
            f"  _busy=$(printf '%s\\n' \"$_q\" | awk -F'|' -v p={ours} 'index($2, p) == 1' | wc -l)\n"
            f'  if [ "$_busy" -ge {int(max_concurrent_jobs)} ]; then printf \'BUSY %s\\n\' "$_busy"; exit 0; fi\n'
        )
    return (
        f"[ -d {log_dir_arg} ] || mkdir -p -- {log_dir_arg} || exit 1\n"  # a test is a builtin, mkdir a process
        f"exec 9>>{lock}\n"
        "flock -w 120 9 || { echo 'could not take the submission lock' >&2; exit 1; }\n"
        + ADOPTION_FUNCTION
        + f"_pick=$(_adopt {adoption_args(log_dir, key)}) || exit 1\n"
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


# Reads "<id>|<state>|<name>" lines (name: an array element's, 1234_7, or its pending range's,
# 1234_[2-4]); prints "<id> <state>" of the first id in the comma list ``ids`` (newest first) that
# the scheduler knows, by its raw id or its element name.
_NEWEST_KNOWN_AWK = (
    RANGE_AWK
    + r"""
BEGIN { n = split(ids, order, ",") }
{ id = $1; gsub(/ /, "", id); name = $3; gsub(/ /, "", name)
  state = $2; sub(/^ +/, "", state); sub(/ .*$/, "", state) }
state != "" && id != "" { known[id] = state }
state != "" && name != "" { known[name] = state; m = elements(name, el); for (j = 1; j <= m; j++) known[el[j]] = state }
END { for (i = 1; i <= n; i++) if (order[i] in known) { print order[i], known[order[i]]; exit } }
"""
)

# A shell function: ``_adopt RECORD CLAIMED [TRY]`` prints "<id> <state>" of the newest job in the
# task instance's record (:func:`jobs_record`) that the scheduler still knows, running or ended, and
# that no trigger watched (no ``CLAIMED<id>.cursor.watched``), unless the record says it was
# submitted for try TRY: a job a trigger of this very try watched is still its own (the triggerer
# that submitted an array element restarted), a job watched for an earlier try was that try's.
# Prints nothing when there is none; fails when the scheduler cannot be asked: submitting blind
# could run a live job, or a finished one, twice. Record lines are ``<id>`` or ``<id> <try>``.
ADOPTION_FUNCTION = (
    "_adopt() {\n"
    "  _mine=\n"
    '  if [ -f "$1" ]; then\n'
    '    for _j in $(awk -v t="${3-}" \'$1 !~ /^[0-9]+(_[0-9]+)?$/ { next } '
    'NF == 1 { a[n++] = $1 } NF == 2 { a[n++] = ($2 == t ? "=" : "") $1 } '
    'END { for (i = n - 1; i >= 0; i--) print a[i] }\' "$1"); do\n'
    '      case $_j in =*) _mine="$_mine${_mine:+,}${_j#=}" ;; '
    '*) [ -e "$2$_j".cursor.watched ] || _mine="$_mine${_mine:+,}$_j" ;; esac\n'
    "    done\n"
    "  fi\n"
    '  [ -n "$_mine" ] || return 0\n'
    # squeue knows every live job and, for a while, ended ones; accounting knows older ones.
    # Unknown ids are an answer; any other failure stops the submission.
    "  _k=$(squeue -h -t all -j \"$_mine\" -O 'JobID:|,State:|,JobArrayID:|' 2>&1); _rc=$?\n"
    '  case $_rc:$_k in 0:*|*"Invalid job id"*) ;; '
    '*) printf \'squeue exited %s: %s\\n\' "$_rc" "$_k" >&2; return 1;; esac\n'
    f"  _p=$(printf '%s\\n' \"$_k\" | awk -F'|' -v ids=\"$_mine\" {quote(_NEWEST_KNOWN_AWK)})\n"
    '  if [ -z "$_p" ]; then\n'
    '    _k=$(sacct -n -X -P -j "$_mine" -o JobIDRaw,State,JobID 2>&1); _rc=$?\n'
    '    case $_rc:$_k in 0:*|*"accounting storage is disabled"*) ;; '
    '*) printf \'sacct exited %s: %s\\n\' "$_rc" "$_k" >&2; return 1;; esac\n'
    f"    _p=$(printf '%s\\n' \"$_k\" | awk -F'|' -v ids=\"$_mine\" {quote(_NEWEST_KNOWN_AWK)})\n"
    "  fi\n"
    "  printf '%s' \"$_p\"\n"
    "}\n"
)


def adoption_args(log_dir: str, key: JobKey, *, this_try: bool = False) -> str:
    """The arguments of ``_adopt`` (:data:`ADOPTION_FUNCTION`) for one task instance; with
    ``this_try``, its jobs recorded for this try are its own even once a trigger watched them."""
    record = remote_shell.home_relative(jobs_record(log_dir, key))
    claimed = remote_shell.home_relative(f"{log_dir.rstrip('/')}/{key.task_digest}-")
    return f"{record} {claimed}" + (f" {int(key.try_number)}" if this_try else "")


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
        observations = {job_id: observe(seen, poll.accounting_available) for job_id, seen in poll.observations.items()}
        return PollReport(observations=observations, failure=failure, notices=notices)

    def cancel_script(self, job_ids: Sequence[str]) -> str:
        return cancel_script(job_ids)
