"""Grid Engine (Son of Grid Engine; the SGE 6.2 family), as pure functions: the batch script, the
submit/poll/cancel scripts, and reading the answers.

Nothing here does I/O; every function is tested with golden files and output recorded on the test
cluster (tests/fixtures/sge). Facts it relies on (SoGE 8.1.9 from Debian 12, seen there):

* ``qsub -terse`` prints the bare job id (``42``; an array ``42.1-3:1``) and reads the script from
  stdin. ``#$`` lines are options, split on blanks without shell quoting (``#$ -N "a b"`` is
  refused), and command-line options win over them: what may hold blanks (job name, output path,
  working directory) goes on the command line, shell-quoted. A job name may not start with a digit.
* ``-o`` expands ``$JOB_ID`` itself, so the output path names the job; ``-o`` also reads ``:`` (a
  host) and ``,`` (a list), so the log directory may hold neither. The queue's shell runs the
  script unless ``-S`` names one (``shell_start_mode posix_compliant``, the default): the
  interpreter of the shebang is passed with ``-S``. A shell listed in ``login_shells`` (by
  default sh, bash, ksh, csh, tcsh) then starts as a login shell, whatever the shebang says.
* A missing output directory, working directory or shell leaves the job in ``Eqw`` until someone
  runs ``qmod -cj`` or ``qdel``; ``qstat -j <ids>`` tells why (``error reason``).
* ``qstat -xml -u <user>`` lists that user's queued and running jobs, one XML element per line,
  and no finished job. ``qacct -j <id>`` prints the accounting record of a finished job (one per
  run: a rescheduled job has several, the last is the latest) and exits 1 with ``error: job id N
  not found`` for an id it does not know, such as a pending job removed by ``qdel``, which never
  reaches accounting. The record is written when the job ends, or up to the site's
  ``accounting_flush_time`` later: until then the job is absent, which is not an end.
* A record's ``failed`` says what Grid Engine did, ``exit_status`` what the script did: ``0`` with
  any exit status (137 is then an exit code); ``100 : assumedly after job``: killed by a signal,
  exit status 128 + signal (a ``qdel`` of a running job gives 100 and 137, as any SIGKILL does);
  ``37 : qmaster enforced h_rt, h_cpu, or h_vmem limit`` (an ``h_rt`` overrun gives 37 and 137);
  26, 27, 28: the output file, shell or working directory failed, with exit status 0 although
  nothing ran. Only a ``qdel`` this provider issued is known as one: :func:`cancel_script` leaves
  a marker beside the logs that the poll reads.
* ``h_vmem`` is per slot and enforced with setrlimit: a job over it sees failed allocations
  (Python's MemoryError, exit 1), not a kill. ``h_rt`` takes seconds or H:M:S with hours
  unbounded; the record's ``category`` shows the request in seconds (``-l h_rt=3,h_vmem=1G``).
* qacct prints ``ru_maxrss`` (KiB, from getrusage) with units as if it were bytes: ``307.902KB``
  is 307.9 MiB. ``qdel`` of a job that is gone exits 1: ``denied: job "N" does not exist``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta

from airflow_hpc_provider.dialects import remote_shell, slurm
from airflow_hpc_provider.dialects.base import Observation, PollReport
from airflow_hpc_provider.dialects.directives import checked_extra_directives, default_shebang, split_user_script
from airflow_hpc_provider.dialects.remote_shell import LogRead, quote
from airflow_hpc_provider.dialects.sge_status import (
    parse_error_reasons,
    parse_qacct,
    parse_queue,
    status_from_record,
)
from airflow_hpc_provider.dialects.slurm import SubmitOutcome
from airflow_hpc_provider.errors import ConnectionConfigError, JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobState, JobStatus

# Options the provider owns: the job name (the key), where output goes (to stream it), how the
# environment travels, which shell runs the script, and how qsub answers.
RESERVED_OPTIONS = ("-N", "-o", "-e", "-j", "-v", "-V", "-S", "-terse", "-cwd", "-wd", "-b", "-sync", "-t")

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_NAME_BASE_MAX = 32
# A log directory -o cannot misread: no ':' (host), ',' (list) or '$' (its own variables).
_SAFE_LOG_DIR = re.compile(r"[A-Za-z0-9_./+~-]+")
_SHEBANG = re.compile(r"^#!\s*(/[A-Za-z0-9_./+-]+)")
_JOB_ID = re.compile(r"\d+")
# A job, or an array element ``<job>.<task>`` (mapped task instances: :mod:`.sge_array`).
_JOB_OR_ELEMENT = re.compile(r"\d+(\.\d+)?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEFAULT_SHELL = "/bin/bash"


# --- the batch script -------------------------------------------------------------------------


def render_script(spec: JobSpec, *, script: str | None = None, parallel_environment: str | None = None) -> str:
    """The batch script: shebang, ``#$`` resource lines, env names, setup lines, the command.

    ``script`` (a whole script by the user) keeps its shebang and its own ``#$`` lines; ours go
    right after the shebang, the setup lines after the script's directive block. Name, output,
    working directory, shell and environment are qsub command-line options (:func:`submit_script`).
    """
    directives = [f"#$ {option}\n" for option in resource_options(spec, parallel_environment=parallel_environment)]
    env_note = (
        f"# environment from Airflow (values passed by qsub -v, not written here): {' '.join(spec.env_names)}\n"
        if spec.env_names
        else ""
    )
    setup = "".join(f"{line}\n" for line in spec.setup)
    if script is None:
        body = spec.command if spec.command.endswith("\n") else spec.command + "\n"
        return default_shebang(spec.login_shell) + "".join(directives) + env_note + setup + body
    shebang, header, rest = split_user_script(script, spec.login_shell)
    return shebang + "".join(directives) + header + env_note + setup + rest


def resource_options(spec: JobSpec, *, parallel_environment: str | None = None) -> list[str]:
    """``-q``, ``-P``, ``-pe``, ``-l h_vmem``, ``-l h_rt``, then the author's extra directives.

    Memory is for the whole job, as in the Slurm dialect (one node): ``h_vmem`` is per slot, so
    the request is divided among the slots (rounded up). More than one CPU needs a parallel
    environment, whose name is the site's (``smp``, ``threaded``, ...): there is no safe default.
    """
    res = spec.resources
    if res.gres or res.gpus:
        raise JobSpecError(
            "Grid Engine has no standard GPU request; name the site's resource in extra_directives, "
            "for example '-l gpu=2'"
        )
    if res.nodes and res.nodes > 1:
        raise JobSpecError(
            f"nodes={res.nodes}: Grid Engine places slots, not nodes; ask for slots in a parallel environment "
            "that spreads them (allocation_rule $round_robin or $fill_up) in extra_directives"
        )
    slots = res.cpus or 1
    if slots > 1 and not parallel_environment:
        raise JobSpecError(f"cpus={slots} needs a parallel environment (the site's name for it, often 'smp')")
    options: list[str] = []
    if res.partition:
        options.append(f"-q {res.partition}")
    if res.account:
        options.append(f"-P {res.account}")
    if slots > 1 and parallel_environment:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", parallel_environment):
            raise JobSpecError(f"parallel_environment={parallel_environment!r} is not a name Grid Engine accepts")
        options.append(f"-pe {parallel_environment} {slots}")
    if res.memory_mb:
        options.append(f"-l h_vmem={math.ceil(res.memory_mb / slots)}M")
    if res.time_limit:
        options.append(f"-l h_rt={sge_time(res.time_limit)}")
    options.extend(checked_extra_directives(spec.extra_directives, RESERVED_OPTIONS))
    return options


def sge_time(limit: timedelta) -> str:
    """``H:MM:SS`` with as many hours as it takes, whole seconds rounded up (never 0: no limit)."""
    total = max(1, math.ceil(limit.total_seconds()))
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


# --- names and paths --------------------------------------------------------------------------


def job_name(spec: JobSpec, key: JobKey) -> str:
    """``<name>-<task digest>-try<n>``: the name carries the key, as in the PBS dialect, because
    the name is what ``qstat -xml`` lists for every job in one call (a context variable would need
    a ``qstat -j`` per job). Letters first: Grid Engine refuses a name that starts with a digit."""
    return f"{name_base(spec.job_name)}-{key.task_digest}-try{key.try_number}"


def name_base(name: str) -> str:
    """A job name's first part as Grid Engine takes it: a letter first, then ``[A-Za-z0-9_.-]``."""
    base = _NAME_UNSAFE.sub("_", name)[:_NAME_BASE_MAX] or "job"
    return base if base[0].isalpha() else "j" + base[: _NAME_BASE_MAX - 1]


# The output file and its cursor are named as Slurm's are: the job id is in the path (-o $JOB_ID).
log_path = slurm.log_path
cursor_path = slurm.cursor_path
jobs_record = slurm.jobs_record


def cancelled_dir(log_dir: str) -> str:
    """Where :func:`cancel_script` marks the jobs it deleted (one empty file per job id)."""
    return f"{log_dir.rstrip('/')}/cancelled"


def _checked_log_dir(log_dir: str) -> str:
    if not _SAFE_LOG_DIR.fullmatch(log_dir):
        raise ConnectionConfigError(
            f"log directory {log_dir!r}: use only letters, digits and '_./+~-' (qsub -o reads ':', ',' and '$')"
        )
    return log_dir


def _checked_id(job_id: str) -> str:
    # Ids come back from our own submissions; anything else is a bug, not something to quote past.
    if not _JOB_OR_ELEMENT.fullmatch(job_id):
        raise ValueError(f"{job_id!r} is not a Grid Engine job id")
    return job_id


# --- submission -------------------------------------------------------------------------------

# Reads `qstat -xml`; prints the id of every job whose name ends with `want` and digits (our task,
# any try) and that is not being deleted. One element per line, as qstat writes it.
# Over a jobs record: its job ids, newest first.
_NEWEST_FIRST_AWK = "NF == 1 && $1 ~ /^[0-9]+$/ { a[n++] = $1 } END { for (i = n - 1; i >= 0; i--) print a[i] }"

# Over `qacct -j` of one job: COMPLETED when Grid Engine and the script both said 0, else FAILED
# (the poll reads the details; this word only says the job has ended).
_ENDED_AWK = r"""
$1 == "failed" { failed = $2 } $1 == "exit_status" { code = $2 }
END { print (failed == "0" && code == "0") ? "COMPLETED" : "FAILED" }
"""

_ADOPT_AWK = r"""
function value(line) { sub(/^[ \t]*<[^>]*>/, "", line); sub(/<\/.*$/, "", line); return line }
/<JB_job_number>/ { id = value($0) }
/<JB_name>/ { name = value($0) }
/<state>/ { st = value($0) }
/<\/job_list>/ {
  n = index(name, want)
  if (n > 0 && substr(name, n + length(want)) ~ /^[0-9]+$/ && st !~ /d/ && !(id in seen)) { seen[id] = 1; print id }
  id = ""; name = ""; st = ""
}
"""


def submit_script(spec: JobSpec, batch_script: str, *, key: JobKey, log_dir: str, env: Mapping[str, str]) -> str:
    """One round trip: take a per-task lock, adopt a job of this task no trigger watched, or submit.

    The lock (``flock`` beside the logs) closes the race of two workers submitting the same task;
    the search of ``qstat -xml`` by job name closes the gap between a submission and Airflow
    recording it. A failing qstat stops the submission: submitting blind could duplicate a job.
    ``qstat`` lists live jobs only, so every submission is also recorded (``jobs_record``) before
    it is printed, and a recorded, unwatched job that ``qacct`` knows has ended is adopted with
    how it ended: a job that finished while its worker was dead decides the retry and is not run
    again. The script goes to qsub on stdin; env values are exported in this shell and named in ``-v``.
    """
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise JobSpecError(f"env name {name!r} is not a valid environment variable name")
    log_dir = _checked_log_dir(log_dir).rstrip("/")
    output = remote_shell.home_relative(f"{log_dir}/{key.task_digest}-$JOB_ID.log")
    qsub = ["qsub", "-terse", "-N", quote(job_name(spec, key)), "-o", output, "-j", "y"]
    if spec.working_dir:
        qsub += ["-wd", remote_shell.home_relative(spec.working_dir)]
    interpreter = _SHEBANG.match(batch_script)
    qsub += ["-S", quote(interpreter.group(1) if interpreter else _DEFAULT_SHELL)]
    if env:
        qsub += ["-v", quote(",".join(env))]
    lock = remote_shell.home_relative(f"{log_dir}/{key.task_digest}.lock")
    record = remote_shell.home_relative(jobs_record(log_dir, key))
    claimed = remote_shell.home_relative(f"{log_dir}/{key.task_digest}-")
    find_live = f"printf '%s\\n' \"$_q\" | awk -v want={quote('-' + key.task_digest + '-try')} {quote(_ADOPT_AWK)}"
    return (
        f"mkdir -p -- {remote_shell.home_relative(log_dir)} || exit 1\n"
        f"exec 9>>{lock}\n"
        "flock -w 120 9 || { echo 'could not take the submission lock' >&2; exit 1; }\n"
        '_q=$(qstat -xml -u "$(id -un)" 2>&1) || { printf \'qstat exited %s: %s\\n\' "$?" "$_q" >&2; exit 1; }\n'
        # The first live job of this task that no trigger watches (see WatchedJob.claimed_by_trigger).
        "_live=\n"
        f"for _j in $({find_live}); do\n"
        f'  [ -e {claimed}"$_j".cursor.watched ] || {{ _live=$_j; break; }}\n'
        "done\n"
        # Else the newest recorded job that no trigger watched and accounting knows has ended.
        'if [ -z "$_live" ] && [ -f ' + record + " ]; then\n"
        f"  for _j in $(awk {quote(_NEWEST_FIRST_AWK)} {record}); do\n"
        f'    [ -e {claimed}"$_j".cursor.watched ] && continue\n'
        '    _a=$(qacct -j "$_j" 2>/dev/null) || continue\n'
        f"    _st=$(printf '%s\\n' \"$_a\" | awk {quote(_ENDED_AWK)})\n"
        '    printf \'ADOPTED %s\\nSTATE %s\\n\' "$_j" "$_st"; exit 0\n'
        "  done\n"
        "fi\n"
        'if [ -n "$_live" ]; then\n'
        "  printf 'ADOPTED %s\\n' \"$_live\"; _id=$_live\n"
        "else\n"
        + remote_shell.export_lines(env)
        + "  _id=$("
        + remote_shell.heredoc(batch_script, feed=" ".join(qsub))
        + ") || exit $?\n"
        "  _id=${_id%%.*}\n"  # an array job answers 42.1-3:1
        # Recorded before it is printed: a link that drops now cannot lose the job.
        f'  printf \'%s\\n\' "$_id" >> {record} || echo "could not record job $_id in" {record} >&2\n'
        "  printf 'SUBMITTED %s\\n' \"$_id\"\n"
        "fi\n"
        # qstat's plain listing: the state is the fifth column
        '_st=$(qstat -u "$(id -un)" 2>/dev/null | awk -v id="$_id" \'$1 == id { print $5; exit }\')\n'
        "printf 'STATE %s\\n' \"$_st\"\n"
    )


def parse_submit_output(stdout: str) -> SubmitOutcome:
    return slurm.parse_submit_output(stdout, _JOB_ID)


def cancel_script(job_ids: Sequence[str], log_dir: str) -> str:
    """Mark each job as cancelled by us, then one ``qdel`` for all: an array element ``812.3`` as
    ``812 -t 3`` (only that task; several such pairs go in one call). A job already gone is no
    error (there is nothing left to cancel); any other refusal is, with qdel's words on stderr."""
    ids = [_checked_id(job_id) for job_id in job_ids]
    targets = " ".join(job_id.replace(".", " -t ") for job_id in ids)
    marks = remote_shell.home_relative(cancelled_dir(_checked_log_dir(log_dir)))
    return (
        f'mkdir -p -- {marks} && for _j in {" ".join(ids)}; do : > {marks}/"$_j"; done\n'
        f"_o=$(qdel {targets} 2>&1) && exit 0\n"
        "printf '%s\\n' \"$_o\" | awk 'NF && !/has (registered|deleted)|does not exist/ { bad = 1 } END { exit bad }' "
        "|| { printf '%s\\n' \"$_o\" >&2; exit 1; }\n"
    )


# --- polling ----------------------------------------------------------------------------------

# Whether Grid Engine's task list (``1-20:1``, ``1,4``, ``1-5:2``) holds a task: an awk function,
# shared by the poll and the adoption of array elements (sge_status.in_task_list reads the same).
TASK_LIST_AWK = r"""
function in_tasks(t, list,   parts, n, i, span, step, c, first, last) {
  n = split(list, parts, ",")
  for (i = 1; i <= n; i++) {
    span = parts[i]; step = 1; c = index(span, ":")
    if (c) { step = substr(span, c + 1) + 0; span = substr(span, 1, c - 1) }
    c = index(span, "-")
    if (c) { first = substr(span, 1, c - 1) + 0; last = substr(span, c + 1) + 0 }
    else { first = span + 0; last = first }
    if (step < 1) step = 1
    if (t + 0 >= first && t + 0 <= last && (t - first) % step == 0) return 1
  }
  return 0
}
"""

# Over `qstat -xml` and the asked ids (jobs, or elements <job>.<task>): prints "<ids qstat no longer
# lists>|<job numbers of listed ids in an error state>|<job numbers of the ids not listed>".
# A job's line names it; a task's line (<tasks>3</tasks>) its element, looked up directly; a pending
# line's task list (1-20:1) each asked element of its job: the work grows with the lines and the
# asked elements, never with their product (a thousand running tasks have a thousand lines).
_SORT_AWK = (
    TASK_LIST_AWK
    + r"""
function value(line) { sub(/^[ \t]*<[^>]*>/, "", line); sub(/<\/.*$/, "", line); return line }
function seen(k) { listed[k] = 1; if (st ~ /E/) err[id] = 1 }
BEGIN {
  n = split(ids, a, ",")
  for (i = 1; i <= n; i++) {
    asked[a[i]] = 1; d = index(a[i], ".")
    if (d) { j = substr(a[i], 1, d - 1); job[a[i]] = j; tasks[j] = tasks[j] " " substr(a[i], d + 1) }
    else job[a[i]] = a[i]
  }
}
/<JB_job_number>/ { id = value($0) }
/<state>/ { st = value($0) }
/<tasks>/ { tl = value($0) }
/<\/job_list>/ {
  if (id in asked) seen(id)
  if (tl ~ /^[0-9]+$/) { if ((id "." tl) in asked) seen(id "." tl) }
  else if (tl != "" && (id in tasks)) {
    m = split(tasks[id], t, " ")
    for (i = 1; i <= m; i++) if (in_tasks(t[i], tl)) seen(id "." t[i])
  }
  id = ""; st = ""; tl = ""
}
END {
  for (k in asked) if (!(k in listed)) {
    gone = gone s k; s = " "
    if (!(job[k] in g)) { g[job[k]] = 1; jobs = jobs c2 job[k]; c2 = " " }
  }
  for (k in err) { bad = bad c k; c = "," }
  printf "%s|%s|%s", gone, bad, jobs
}
"""
)


def poll_script(token: str, job_ids: Sequence[str], reads: Sequence[LogRead], log_dir: str) -> str:
    """One ``qstat -xml`` for all of the user's jobs; for the asked ids it no longer lists, one
    ``qacct -j`` per job number (an array's ended elements share one) and whether we cancelled
    them; for ids in an error state, ``qstat -j`` for the reason; then the log reads. Decided on
    the login node, in one round trip."""
    ids = ",".join(_checked_id(job_id) for job_id in job_ids)
    marks = remote_shell.home_relative(cancelled_dir(_checked_log_dir(log_dir)))
    body = remote_shell.section(token, "qstat", 'qstat -xml -u "$(id -un)"')
    body += (
        'if [ "$_rc" = 0 ]; then\n'
        f"  _w=$(printf '%s\\n' \"$_r\" | awk -v ids={quote(ids)} {quote(_SORT_AWK)})\n"
        "  _gone=${_w%%|*}; _w=${_w#*|}; _bad=${_w%%|*}; _jobs=${_w#*|}\n"
        '  if [ -n "$_bad" ]; then\n'
        + remote_shell.section(token, "errors", "qstat -j \"$_bad\" | grep -E '^(job_number|error reason)'")
        + "  fi\n"
        '  if [ -n "$_gone" ]; then\n'
        + remote_shell.section(token, "qacct", 'for _j in $_jobs; do qacct -j "$_j"; done')
        + remote_shell.section(token, "cancelled", f'for _j in $_gone; do [ ! -e {marks}/"$_j" ] || echo "$_j"; done')
        + "  fi\n"
        "fi\n"
    )
    return remote_shell.poll_script(token, body, reads)


class SgeDialect:
    """The Grid Engine dialect as the poller sees it, for one connection's log directory."""

    name = "Grid Engine"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = _checked_log_dir(log_dir)

    def poll_script(self, token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str:
        if not job_ids:
            return remote_shell.poll_script(token, "", reads)
        return poll_script(token, job_ids, reads, self.log_dir)

    def read_poll(self, sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str]) -> PollReport:
        if "qstat" not in sections:
            return PollReport(observations={}, failure="the poll printed no qstat section")
        rc, text = sections["qstat"]
        if rc != 0:
            return PollReport(observations={}, failure=f"qstat exited {rc}: {text.strip()!r}")
        try:
            queue = parse_queue(text)
        except ValueError as error:
            return PollReport(observations={}, failure=str(error))
        reasons = parse_error_reasons(sections.get("errors", (0, ""))[1])
        records, _, notices = parse_qacct(sections.get("qacct", (0, ""))[1])
        cancelled = set(sections.get("cancelled", (0, ""))[1].split())
        observations: dict[str, Observation] = {}
        for job_id in job_ids:
            listed = queue.status(job_id)
            if listed is not None:
                status = listed
                if job_id in reasons:
                    reason = f"{reasons[job_id]} (qmod -cj clears the error, qdel removes the job)"
                    status = JobStatus(**{**status.__dict__, "reason": reason})
                observations[job_id] = Observation(status, final=False)
            elif job_id in records:
                status = status_from_record(records[job_id], cancelled=job_id in cancelled)
                observations[job_id] = Observation(status, final=status.state.is_terminal)
            elif job_id in cancelled:
                # A pending job deleted by qdel never reaches accounting; a running one may not yet.
                reason = "deleted by this provider (qdel); no accounting record"
                status = JobStatus(job_id, JobState.CANCELLED, JobState.CANCELLED.value, reason=reason)
                observations[job_id] = Observation(status, final=True)
            else:
                observations[job_id] = Observation(None, final=False)  # the poller's grace decides
        return PollReport(observations=observations, notices=tuple(notices))

    def cancel_script(self, job_ids: Sequence[str]) -> str:
        return cancel_script(job_ids, self.log_dir)
