"""PBS, as pure functions, for two flavours: PBS Pro / OpenPBS and Torque.

Nothing here does I/O, so every function is tested with golden files and recorded command output.
The shape follows :mod:`airflow_hpc_provider.dialects.slurm`: render the batch script, build the
one-round-trip submit script, build one poll command for many ids, read the answers, cancel.

Facts this module relies on:

* PBS Pro: ``qstat -x -f -F json <ids>`` reports running and finished (history) jobs in one call;
  ``Exit_status`` is the script's exit code (0-255), ``256 + signal`` when the job was killed by a
  signal (a ``qdel`` of a running job shows 271, SIGTERM), or a negative ``JOB_EXEC_*`` code from
  the server (-29 walltime, -27 memory: see ``PBS_PRO_EXEC_CODES``). The output file named by
  ``-o`` is often only staged back when the job ends, so on PBS Pro the log usually arrives at
  completion rather than streaming while the job runs.
* Torque: ``qstat -f <ids>`` text blocks (``Job Id: 12.host``, indented ``key = value`` lines,
  long values continued on lines starting with a tab); finished jobs stay as ``C`` with
  ``exit_status`` for ``keep_completed`` seconds. Its negative codes differ from PBS Pro's
  (-11 is walltime exceeded in Torque, a rerun in PBS Pro), hence one table per flavour.
* The Torque-compatible wrappers around Slurm (Debian ``slurm-wlm-torque``, checked on the test
  cluster) differ again: ``qsub`` prints a bare id and builds an ``sbatch`` command line as one
  string run by a shell, so every argument we give it must be free of shell metacharacters;
  ``-v NAME`` copies the value of ``$NAME`` into that string (and onto the command line) and turns
  on ``--export=none``; ``-S`` is ignored with a warning (sbatch honours the shebang instead);
  ``#PBS`` lines in the script are read by sbatch, except ``-o``/``-e``, which the wrapper always
  passes on the command line; it does not read a script from stdin; held jobs show as ``Q``;
  finished jobs show as ``C`` with no exit status at all; ``qstat -f`` shows no Variable_List;
  ``qstat`` exits 153 with no output when none of the ids is known; ``-x`` and ``-F`` are unknown.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from airflow_hpc_provider.dialects import remote_shell, slurm
from airflow_hpc_provider.dialects.base import Observation, PollReport
from airflow_hpc_provider.dialects.directives import checked_extra_directives
from airflow_hpc_provider.dialects.remote_shell import LogRead, quote
from airflow_hpc_provider.errors import ConnectionConfigError, JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobState, JobStatus, signal_of_shell_status


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

# Negative Exit_status values are the server's own words (openpbs src/include/job.h).
PBS_PRO_EXEC_CODES: Mapping[int, tuple[str, JobState]] = {
    -1: ("JOB_EXEC_FAIL1: could not start the job, before staging files", JobState.FAILED),
    -2: ("JOB_EXEC_FAIL2: could not start the job, after staging files", JobState.FAILED),
    -3: ("JOB_EXEC_RETRY: start failed, to be retried", JobState.FAILED),
    -4: ("JOB_EXEC_INITABT: aborted while MoM initialised", JobState.NODE_FAIL),
    -5: ("JOB_EXEC_INITRST: aborted while MoM initialised (checkpointed)", JobState.NODE_FAIL),
    -6: ("JOB_EXEC_INITRMG: aborted while MoM initialised (checkpointed)", JobState.NODE_FAIL),
    -7: ("JOB_EXEC_BADRESRT: restart from checkpoint failed", JobState.FAILED),
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

# Torque's table (Torque 6 admin guide, "Job exit status"): same first seven, then its own.
TORQUE_EXEC_CODES: Mapping[int, tuple[str, JobState]] = {
    -1: ("JOB_EXEC_FAIL1: could not start the job, before staging files", JobState.FAILED),
    -2: ("JOB_EXEC_FAIL2: could not start the job, after staging files", JobState.FAILED),
    -3: ("JOB_EXEC_RETRY: start failed, to be retried", JobState.FAILED),
    -4: ("JOB_EXEC_INITABT: aborted while MoM initialised", JobState.NODE_FAIL),
    -5: ("JOB_EXEC_INITRST: aborted while MoM initialised (checkpointed)", JobState.NODE_FAIL),
    -6: ("JOB_EXEC_INITRMG: aborted while MoM initialised (checkpointed)", JobState.NODE_FAIL),
    -7: ("JOB_EXEC_BADRESRT: restart from checkpoint failed", JobState.FAILED),
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

# Options this provider owns: it must know the job name (the key), where output goes (to stream
# it), how the environment travels, and which shell runs the script.
RESERVED_OPTIONS = ("-N", "-o", "-e", "-j", "-k", "-v", "-V", "-S")

# Job names: PBS Pro allows 236 characters, letters first; we keep well inside that, and inside
# what a qstat -f line holds unwrapped, and only characters no wrapper shell can misread.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_NAME_BASE_MAX = 32
# A remote path the Slurm-backed qsub wrapper passes through its own shell unquoted.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+~-]+$")
_SHEBANG = re.compile(r"^#!\s*(/[A-Za-z0-9_./+-]+)")
# 1234, 1234.server, 1234[].server, 1234[7].server.domain
_JOB_ID = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9_.-]+)?$")


# --- the batch script -------------------------------------------------------------------------


def render_script(spec: JobSpec, flavour: PbsFlavour, *, script: str | None = None, exit_dir: str | None = None) -> str:
    """The batch script: shebang, ``#PBS`` resource lines, env names, working dir, setup, command.

    With ``exit_dir``, a shell script also records its own exit status in ``<exit_dir>/<job id>``
    (written atomically when the script exits): some PBS front ends, such as the Slurm-backed
    Torque wrappers, never report one, and a finished job without it cannot count as a success.

    ``script`` (a whole script by the user) keeps its shebang and its own ``#PBS`` lines; ours go
    right after the shebang (PBS reads directives only before the first command), and the setup
    lines go after the script's directive block. Options given to ``qsub`` on the command line
    (name, output, environment) win over any ``#PBS`` line with the same option.
    """
    directives = [f"#PBS {option}\n" for option in resource_options(spec, flavour)]
    env_note = (
        f"# environment from Airflow (values exported to qsub, not written here): {' '.join(spec.env_names)}\n"
        if spec.env_names
        else ""
    )
    # PBS Pro has no qsub option for the working directory (jobs start in $HOME) and the wrapper's
    # -wd would go through its shell unquoted, so the script changes directory itself.
    chdir = f"cd -- {remote_shell.home_relative(spec.working_dir)} || exit 1\n" if spec.working_dir else ""
    setup = "".join(f"{line}\n" for line in spec.setup)
    default_shebang = "#!/bin/bash -l\n" if spec.login_shell else "#!/bin/bash\n"
    if script is None:
        body = spec.command if spec.command.endswith("\n") else spec.command + "\n"
        if not exit_dir:
            return default_shebang + "".join(directives) + env_note + chdir + setup + body
        payload = chdir + setup + body
        return default_shebang + "".join(directives) + env_note + exit_recorder(exit_dir) + in_background(payload)
    lines = script.splitlines(keepends=True)
    if lines and lines[0].startswith("#!"):
        shebang, lines = lines[0], lines[1:]
    else:
        shebang = default_shebang
    header_end = 0
    while header_end < len(lines) and (lines[header_end].startswith("#") or not lines[header_end].strip()):
        header_end += 1
    header, rest = "".join(lines[:header_end]), "".join(lines[header_end:])
    if header and not header.endswith("\n"):
        header += "\n"
    # Only a POSIX-family shell understands the trap; another interpreter's exit stays unknown.
    shell = re.match(r"#!\s*\S*/(?:env\s+)?(ba|da|k|z)?sh\b", shebang)
    if not (exit_dir and shell):
        return shebang + "".join(directives) + header + env_note + chdir + setup + rest
    payload = chdir + setup + rest
    return shebang + "".join(directives) + header + env_note + exit_recorder(exit_dir) + in_background(payload)


def exit_recorder(exit_dir: str) -> str:
    """Shell lines that write how the script ended to ``<exit_dir>/<short job id>``, atomically.

    The file holds the exit status (``3``), the status and the signal the script itself received
    (``143 TERM``: a qdel or a walltime kill, which the scheduler sends to the batch shell), or
    ``array`` (the job is an element of a job array, which is refused: it runs nothing).

    The termination signals get traps of their own: on a walltime kill or a qdel, bash would
    otherwise run the EXIT trap with a status of 0 (seen on the test cluster), and a killed job
    would be recorded as a success. Those traps only run because the payload runs in the
    background (:func:`in_background`): a shell waiting for a foreground command runs a trap only
    once that command ends, and the scheduler's SIGKILL comes first. A trapped signal is recorded
    first, then passed on to the payload, which gets until the scheduler's SIGKILL to finish. A
    SIGKILL of the script itself records nothing: the scheduler's own record decides then.
    """
    directory = remote_shell.home_relative(exit_dir)
    return (
        "_airflow_hpc_exit() {\n"
        '  _f="${PBS_JOBID%%.*}"\n'
        f'  mkdir -p -- {directory} && printf \'%s\\n\' "$1" > {directory}/"$_f.tmp" \\\n'
        f'    && mv -f -- {directory}/"$_f.tmp" {directory}/"$_f"\n'
        "}\n"
        "_airflow_hpc_signal() {\n"
        "  trap - EXIT\n"
        '  _airflow_hpc_exit "$2 $1"\n'
        '  if [ -n "${_airflow_hpc_child:-}" ]; then kill -s "$1" "$_airflow_hpc_child" 2>/dev/null; wait; fi\n'
        '  exit "$2"\n'
        "}\n"
        "trap '_airflow_hpc_exit $?' EXIT\n"
        "trap '_airflow_hpc_signal HUP 129' HUP\n"
        "trap '_airflow_hpc_signal INT 130' INT\n"
        "trap '_airflow_hpc_signal TERM 143' TERM\n"
        # Torque, PBS Pro and the Slurm-backed wrappers name an array element's index thus.
        'if [ -n "${PBS_ARRAYID:-}${PBS_ARRAY_INDEX:-}${SLURM_ARRAY_TASK_ID:-}" ]; then\n'
        '  echo "airflow-hpc: job ${PBS_JOBID:-} is an element of a job array, which this provider does not run" >&2\n'
        "  trap - EXIT; _airflow_hpc_exit array; exit 1\n"
        "fi\n"
    )


def in_background(payload: str) -> str:
    """The payload as a background job the script waits for, so the script's traps run at once.

    It stays in the script's own shell (a subshell of it): ``exit`` leaves the payload with its
    status, which the script then exits with; ``$$`` is still the script's process.
    """
    body = payload if payload.endswith("\n") else payload + "\n"
    return "{\n" + body + "} &\n" + "_airflow_hpc_child=$!\n" + 'wait "$_airflow_hpc_child"\n'


def exit_dir(log_dir: str) -> str:
    return f"{log_dir.rstrip('/')}/exit"


def resource_options(spec: JobSpec, flavour: PbsFlavour) -> list[str]:
    """The ``#PBS`` options for the spec's resources, then the author's extra directives.

    Memory is per node, as in the Slurm dialect: a PBS Pro chunk's ``mem`` is per chunk (one chunk
    per node), Torque's ``mem`` is for the whole job, so Torque gets memory times nodes. CPUs and
    GPUs are per node here (``ncpus``/``ngpus`` per chunk, ``ppn``/``gpus`` per node).
    """
    res = spec.resources
    if res.gres:
        raise JobSpecError(
            f"gres={res.gres!r} is a Slurm request; on PBS give the resource in extra_directives, "
            "for example '-l select=1:ngpus=2' or '-l nodes=1:gpus=2'"
        )
    if res.partition and "," in res.partition:
        raise JobSpecError(f"partition={res.partition!r}: a PBS job goes to one queue, not a list")
    options: list[str] = []
    if res.partition:
        options.append(f"-q {res.partition}")
    if res.account:
        options.append(f"-A {res.account}")
    nodes = res.nodes or 1
    if flavour is PbsFlavour.PBS_PRO:
        if res.nodes or res.cpus or res.memory_mb or res.gpus:
            chunk = f"select={nodes}"
            if res.cpus:
                chunk += f":ncpus={res.cpus}"
            if res.memory_mb:
                chunk += f":mem={res.memory_mb}mb"
            if res.gpus:
                chunk += f":ngpus={res.gpus}"
            options.append(f"-l {chunk}")
    else:
        if res.nodes or res.cpus or res.gpus:
            request = f"nodes={nodes}"
            if res.cpus:
                request += f":ppn={res.cpus}"
            if res.gpus:
                request += f":gpus={res.gpus}"
            options.append(f"-l {request}")
        if res.memory_mb:
            options.append(f"-l mem={res.memory_mb * nodes}mb")
    if res.time_limit:
        options.append(f"-l walltime={pbs_walltime(res.time_limit)}")
    options.extend(checked_extra_directives(spec.extra_directives, RESERVED_OPTIONS))
    return options


def pbs_walltime(limit: timedelta) -> str:
    """``HH:MM:SS`` with as many hours as it takes (``36:00:00``): PBS has no day field."""
    total = max(1, int(limit.total_seconds()))
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}"


# --- names and paths --------------------------------------------------------------------------


def job_name(spec: JobSpec, key: JobKey) -> str:
    """``<name>-<task digest>-try<n>``: the job name carries the key.

    Why the name and not a variable: the name is the one attribute every ``qstat -f`` shows (PBS
    Pro, Torque, and the Slurm-backed wrapper, whose ``qstat -f`` has no Variable_List), and it
    can be read back with one qstat call. The author's name is reduced to letters, digits, ``_``,
    ``.`` and ``-`` (PBS rejects others, and the wrapper would hand them to a shell) and cut short.
    The full tag also travels to the job as ``$AIRFLOW_HPC_KEY``.
    """
    base = _NAME_UNSAFE.sub("_", spec.job_name)[:_NAME_BASE_MAX] or "job"
    if not base[0].isalpha():
        base = "j" + base[: _NAME_BASE_MAX - 1]
    return f"{base}-{key.task_digest}-try{key.try_number}"


def log_path(log_dir: str, task_digest: str, try_number: int) -> str:
    """Where a try's output lands. PBS cannot put the job id in ``-o``, so the try names it."""
    return f"{log_dir.rstrip('/')}/{task_digest}-try{try_number}.log"


def cursor_path(log_dir: str, task_digest: str, try_number: int) -> str:
    return f"{log_dir.rstrip('/')}/{task_digest}-try{try_number}.cursor"


def script_path(log_dir: str, key: JobKey) -> str:
    return f"{log_dir.rstrip('/')}/{key.task_digest}-try{key.try_number}.pbs"


def jobs_record(log_dir: str, task_digest: str) -> str:
    """The task instance's submissions, ``<job id> <try>`` a line, appended by the submit script."""
    return f"{log_dir.rstrip('/')}/{task_digest}.jobs"


# --- submission -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PbsSubmitOutcome:
    """What the submit script reported. ``try_number`` is the try that submitted the job (an
    adopted job was submitted by an earlier try), which names its log: see :func:`log_path`."""

    job_id: str
    adopted: bool
    state: str | None
    try_number: int

    @property
    def ended(self) -> bool:
        """An adopted job that had already finished (its worker died before watching it)."""
        return self.adopted and (self.state or "").strip().upper()[:1] in FINISHED_STATES


def submit_script(
    spec: JobSpec,
    batch_script: str,
    flavour: PbsFlavour,
    *,
    key: JobKey,
    log_dir: str,
    env: Mapping[str, str],
) -> str:
    """One round trip: take a per-task lock, adopt an earlier try's job, or submit anew.

    Every submission is appended to the task instance's record (:func:`jobs_record`, ``<id> <try>``)
    before its id is printed, so a worker that dies at any point leaves its job findable. A retry
    asks ``qstat`` about the recorded ids only: the newest one no trigger watched (see
    ``WatchedJob.claimed_by_trigger``) is adopted, running or finished. A finished job qstat no
    longer shows counts when its script recorded an exit status (see :func:`render_script`); one
    with neither is gone, and a new job is submitted.

    The batch script is written to a file under ``log_dir`` first (the wrapper's qsub reads no
    stdin). Environment values are exported in the submitting shell, never put on a command line:
    PBS Pro gets ``-v NAME,...`` (a bare name takes its value from qsub's environment); Torque gets
    ``-V`` (all of qsub's environment), because the Slurm-backed wrapper pastes ``-v`` values into a
    shell command of its own, where a ``$(...)`` in a value would run.
    """
    if not _SAFE_PATH.match(log_dir):
        raise ConnectionConfigError(
            f"log directory {log_dir!r}: use only letters, digits and '_./+~-' (qsub hands it to a shell)"
        )
    name = job_name(spec, key)
    claimed = remote_shell.home_relative(f"{log_dir.rstrip('/')}/{key.task_digest}-try")
    out = remote_shell.home_relative(log_path(log_dir, key.task_digest, key.try_number))
    batch_file = remote_shell.home_relative(script_path(log_dir, key))
    lock = remote_shell.home_relative(f"{log_dir.rstrip('/')}/{key.task_digest}.lock")
    record = remote_shell.home_relative(jobs_record(log_dir, key.task_digest))
    exits = remote_shell.home_relative(exit_dir(log_dir))
    env_names = ["AIRFLOW_HPC_KEY", *(n for n in env if n != "AIRFLOW_HPC_KEY")]
    qsub = ["qsub", "-N", quote(name), "-o", out, "-j", "oe"]
    if flavour is PbsFlavour.PBS_PRO:
        qsub += ["-v", quote(",".join(env_names))]
    else:
        qsub.append("-V")
    interpreter = _SHEBANG.match(batch_script)
    if interpreter:
        # Torque runs the script with the user's login shell unless told; PBS Pro would too.
        qsub += ["-S", quote(interpreter.group(1))]
    qsub.append(batch_file)
    # PBS Pro shows finished jobs only with -x (history); Torque keeps them for keep_completed.
    qstat = "qstat -x -f" if flavour is PbsFlavour.PBS_PRO else "qstat -f"
    exports = remote_shell.export_lines({"AIRFLOW_HPC_KEY": key.tag, **env})
    return (
        f"mkdir -p -- {remote_shell.home_relative(log_dir)} || exit 1\n"
        f"exec 9>>{lock}\n"
        "flock -w 120 9 || { echo 'could not take the submission lock' >&2; exit 1; }\n"
        # This task instance's earlier jobs, newest first, less those a trigger watched.
        "_ids=; set --\n"
        f"if [ -f {record} ]; then set -- $(awk {quote(_RECORD_AWK)} {record}); fi\n"
        "_cand=\n"
        "while [ $# -ge 2 ]; do\n"
        f'  [ -e {claimed}"$2".cursor.watched ] || {{ _cand="$_cand $1:$2"; _ids="$_ids $1"; }}\n'
        "  shift 2\n"
        "done\n"
        "_pick=\n"
        'if [ -n "$_ids" ]; then\n'
        # One qstat for the recorded ids. An id it does not know is an answer (exit 153); any other
        # failure stops the submission: submitting blind could run a live job twice.
        f"  _q=$({qstat} $_ids 2>&1); _rc=$?\n"
        '  case $_rc in 0|153) ;; *) printf \'qstat exited %s: %s\\n\' "$_rc" "$_q" >&2; exit 1;; esac\n'
        f"  _states=$(printf '%s\\n' \"$_q\" | awk {quote(_STATES_AWK)})\n"
        "  for _c in $_cand; do\n"
        "    _j=${_c%:*}; _s=${_j%%.*}\n"
        "    _st=$(printf '%s\\n' \"$_states\" | awk -v i=\"$_s\" '$1 == i { print $2; exit }')\n"
        f'    if [ -z "$_st" ] && [ -f {exits}/"$_s" ]; then _st=F; fi\n'
        '    if [ -n "$_st" ]; then _pick="$_c $_st"; break; fi\n'
        "  done\n"
        "fi\n"
        'if [ -n "$_pick" ]; then\n'
        "  _c=${_pick%% *}; _id=${_c%:*}\n"
        '  printf \'ADOPTED %s %s\\n\' "$_id" "${_c##*:}"\n'
        "else\n"
        + remote_shell.heredoc(batch_script, feed=f"  cat > {batch_file}")
        + "  [ -s "
        + batch_file
        + " ] || { echo 'could not write the batch script' >&2; exit 1; }\n"
        + exports
        + "  _id=$("
        + " ".join(qsub)
        + ') || { _rc=$?; printf \'%s\\n\' "$_id" >&2; exit "$_rc"; }\n'
        # qsub may print warnings first (the wrapper: '-S is ignored'); the id is the last word.
        "  _id=$(printf '%s\\n' \"$_id\" | awk 'NF { w = $NF } END { print w }')\n"
        # Recorded before it is printed: a link that drops now cannot lose the job.
        f"  printf '%s %s\\n' \"$_id\" {key.try_number} >> {record} || echo 'cannot record it in' {record} >&2\n"
        f"  printf 'SUBMITTED %s {key.try_number}\\n' \"$_id\"\n"
        "fi\n"
        'if [ -n "$_pick" ]; then _st=${_pick##* }; else\n'
        '  _st=$(qstat -f "$_id" 2>/dev/null | awk \'$1 == "job_state" { print $3; exit }\')\n'
        "fi\n"
        "printf 'STATE %s\\n' \"$_st\"\n"
    )


# Reads the record (``<id> <try>`` lines); prints them newest first, one word each. Ids and tries
# are checked, so nothing else reaches the shell words built from them.
_RECORD_AWK = r"""
NF == 2 && $1 ~ /^[0-9]+(\[[0-9]*\])?(\.[A-Za-z0-9_.-]+)?$/ && $2 ~ /^[0-9]+$/ { a[n++] = $1 " " $2 }
END { for (i = n - 1; i >= 0; i--) print a[i] }
"""

# Reads `qstat -f` text; prints "<short id> <state letter>" for each job block. Attribute lines are
# indented `key = value` (four spaces on PBS, a tab on the wrapper).
_STATES_AWK = r"""
/^Job Id:/ { id = $0; sub(/^Job Id:[ \t]*/, "", id); sub(/\..*$/, "", id); next }
/^[ \t]+job_state = / && id != "" { v = $0; sub(/^[^=]*= */, "", v); print id, v; id = "" }
"""


def parse_submit_output(stdout: str) -> PbsSubmitOutcome:
    job_id: str | None = None
    adopted = False
    state: str | None = None
    try_number: int | None = None
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("ADOPTED", "SUBMITTED"):
            parts = rest.split()
            if len(parts) == 2 and parts[1].isdigit():
                job_id, try_number, adopted = parts[0], int(parts[1]), word == "ADOPTED"
        elif word == "STATE":
            state = rest.strip() or None
    if not job_id or try_number is None or not _JOB_ID.match(job_id):
        raise ValueError(f"no job id in the submission's output: {stdout!r}")
    return PbsSubmitOutcome(job_id=job_id, adopted=adopted, state=state, try_number=try_number)


def cancel_script(job_ids: Sequence[str]) -> str:
    return "qdel " + " ".join(quote(_checked_id(job_id)) for job_id in job_ids) + "\n"


def _checked_id(job_id: str) -> str:
    # Ids come back from our own submissions; anything else is a bug, not something to quote past
    # (the wrapper's qstat treats ids as regular expressions).
    if not _JOB_ID.match(job_id):
        raise ValueError(f"{job_id!r} is not a PBS job id")
    return job_id


# --- polling ----------------------------------------------------------------------------------


def poll_script(token: str, job_ids: Sequence[str], reads: Sequence[LogRead], flavour: PbsFlavour) -> str:
    """One qstat for every id, its stderr kept apart (so an 'Unknown Job Id' line can never land
    inside the JSON or a text block), then the log reads."""
    ids = " ".join(quote(_checked_id(job_id)) for job_id in job_ids)
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
            if job_id in unknown or _short(job_id) in {_short(u) for u in unknown} or rc == _RC_UNKNOWN:
                missing.append(job_id)
            continue
        statuses[job_id] = status if status.job_id == job_id else _renamed(status, job_id)
    return PbsPoll(statuses=statuses, unknown_ids=tuple(missing), errors=tuple(errors))


def _short(job_id: str) -> str:
    return job_id.split(".", 1)[0]


def _lookup(found: Mapping[str, JobStatus], job_id: str) -> JobStatus | None:
    """Our id as qsub printed it may carry a server suffix qstat drops, or the other way round."""
    if job_id in found:
        return found[job_id]
    short = _short(job_id)
    matches = [status for key, status in found.items() if _short(key) == short]
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


# --- the poller's view ------------------------------------------------------------------------

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


def exits_section(token: str, job_ids: Sequence[str], directory: str) -> str:
    """Print ``<short id> <status>`` for every job whose script recorded its exit status."""
    shorts = " ".join(quote(_short(_checked_id(job_id))) for job_id in job_ids)
    folder = remote_shell.home_relative(directory)
    loop = f'for _i in {shorts}; do [ -f {folder}/"$_i" ] && printf \'%s %s\\n\' "$_i" "$(cat {folder}/"$_i")"; done'
    return remote_shell.section(token, "exits", loop)


@dataclass(frozen=True)
class RecordedExit:
    """What a job's script wrote in its exit-status file (see :func:`exit_recorder`)."""

    code: int | None
    trapped: str | None = None  # the signal the script itself received: HUP, INT or TERM
    array_element: bool = False

    @classmethod
    def parse(cls, text: str) -> RecordedExit | None:
        words = text.split()
        if words == ["array"]:
            return cls(code=None, array_element=True)
        if not words or not words[0].lstrip("-").isdigit():
            return None
        trapped = words[1] if len(words) > 1 and words[1].isalpha() else None
        return cls(code=int(words[0]), trapped=trapped)


def parse_exits(text: str) -> dict[str, RecordedExit]:
    recorded: dict[str, RecordedExit] = {}
    for line in text.splitlines():
        short, _, rest = line.strip().partition(" ")
        seen = RecordedExit.parse(rest)
        if seen is not None:
            recorded[short] = seen
    return recorded


ARRAY_ELEMENT_REASON = (
    "job array: the job is an element of a job array, which this provider refuses (it follows "
    "single jobs and never reports a success on one element's word); the element ran nothing"
)


def with_recorded_exit(status: JobStatus, recorded: RecordedExit | int | None) -> JobStatus:
    """A finished job qstat gave no exit status for, completed by what its script recorded."""
    if isinstance(recorded, int):
        recorded = RecordedExit(code=recorded)
    if recorded is None or status.exit_code is not None or status.state is not JobState.FAILED:
        return status
    if recorded.array_element:
        return JobStatus(**{**status.__dict__, "state": JobState.FAILED, "reason": ARRAY_ELEMENT_REASON})
    code = recorded.code
    assert code is not None
    signal = signal_of_shell_status(code)
    state = JobState.COMPLETED if code == 0 else JobState.FAILED
    if code == 0:
        reason = None
    elif recorded.trapped:
        # The scheduler signals the batch shell on a qdel or a time limit; which one, only its own
        # record says (read where there is one: see PbsDialect).
        reason = f"the job's script received SIG{recorded.trapped} (a qdel or a time limit)"
    elif signal:
        reason = "the job's command was killed by a signal"
    else:
        reason = "exit status recorded by the job's script"
    return JobStatus(**{**status.__dict__, "state": state, "exit_code": code, "signal": signal, "reason": reason})


def is_array_element(status: JobStatus) -> bool:
    return status.reason == ARRAY_ELEMENT_REASON


# --- the Slurm-backed wrappers: Slurm's own record ------------------------------------------------

_ACCOUNTING_FIELDS = "JobIDRaw,State,ExitCode,Elapsed"


def accounting_section(token: str, job_ids: Sequence[str]) -> str:
    """sacct for jobs of the Slurm-backed wrappers whose end the wrapper's qstat cannot tell.

    Their ids are Slurm job ids; without sacct (a real Torque) the section says so and the exit
    status file alone decides.
    """
    ids = ",".join(_checked_id(job_id) for job_id in job_ids)
    command = (
        "command -v sacct >/dev/null 2>&1 || { echo 'no sacct'; exit 127; }; "
        f"sacct -n -P -X -j {quote(ids)} -o {_ACCOUNTING_FIELDS}"
    )
    return remote_shell.section(token, "accounting", command)


@dataclass(frozen=True)
class SlurmRecord:
    state: JobState
    native_state: str
    exit_code: int | None
    signal: int | None
    elapsed: timedelta | None


def parse_accounting(text: str) -> dict[str, SlurmRecord]:
    records: dict[str, SlurmRecord] = {}
    for line in text.splitlines():
        fields = [part.strip() for part in line.split("|")]
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        code, signal = slurm.parse_exit_code(fields[2])
        state = slurm.map_state(fields[1].split(" ")[0])
        records[fields[0]] = SlurmRecord(state, fields[1], code, signal, slurm.parse_elapsed(fields[3]))
    return records


def with_slurm_record(status: JobStatus, record: SlurmRecord) -> JobStatus:
    """A wrapper job's end as Slurm recorded it (``CANCELLED by 1001``, ``TIMEOUT``, ``FAILED 0:9``).

    Slurm's COMPLETED counts only when the script recorded no signal of its own; what the script
    recorded (its exit status, a trapped signal) stays the exit shown, as it is the more precise.
    """
    state = record.state
    if state is JobState.COMPLETED and status.exit_code not in (None, 0):
        state = JobState.FAILED
    exit_code, signal = status.exit_code, status.signal
    if exit_code is None:
        exit_code, signal = record.exit_code, record.signal
    return JobStatus(
        **{
            **status.__dict__,
            "state": state,
            "exit_code": exit_code,
            "signal": signal,
            "reason": None if state.is_success else f"{record.native_state} in Slurm's accounting",
            "elapsed": status.elapsed or record.elapsed,
        }
    )


def forgotten(job_id: str, code: RecordedExit | int) -> JobStatus:
    """A job qstat no longer shows, known only by the exit status its script recorded."""
    status = JobStatus(
        job_id=job_id,
        state=JobState.FAILED,
        native_state="F",
        reason="finished; qstat no longer shows it, so the exit status is the one its script recorded",
    )
    recorded = with_recorded_exit(status, code)
    return recorded if recorded.state is not JobState.COMPLETED else replace(recorded, reason=status.reason)


class PbsDialect:
    """The PBS dialect as the poller sees it, for one flavour and one connection's log directory."""

    name = "PBS"

    def __init__(self, flavour: PbsFlavour, log_dir: str) -> None:
        self.flavour = flavour
        self.log_dir = log_dir
        # Wrapper jobs that finished with their end unknown or signalled: the next poll asks sacct.
        self._ask_slurm: set[str] = set()

    def poll_script(self, token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str:
        if not job_ids:
            return remote_shell.poll_script(token, "", reads)
        script = poll_script(token, job_ids, [], self.flavour)
        script += exits_section(token, job_ids, exit_dir(self.log_dir))
        asked = [job_id for job_id in job_ids if job_id in self._ask_slurm]
        if asked:
            script += accounting_section(token, asked)
        return script + remote_shell.log_reads(token, reads)

    def read_poll(self, sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str]) -> PollReport:
        poll = parse_poll(sections, job_ids, self.flavour)
        if poll.errors and not poll.statuses:
            return PollReport(observations={}, failure="; ".join(poll.errors))
        exits = parse_exits(sections.get("exits", (0, ""))[1])
        accounting_rc, accounting_text = sections.get("accounting", (None, ""))
        records = parse_accounting(accounting_text) if accounting_rc == 0 else {}
        observations: dict[str, Observation] = {}
        for job_id in job_ids:
            status = poll.statuses.get(job_id)
            if status is None:
                code = exits.get(_short(job_id))
                # qstat forgot a finished job (an adopted one, ended long ago): its script's own
                # record of how it ended is the answer. Without one, absent stays absent (LOST later).
                observations[job_id] = (
                    Observation(None, final=False) if code is None else Observation(forgotten(job_id, code), final=True)
                )
                continue
            recorded = exits.get(_short(job_id))
            seen = with_recorded_exit(status, recorded)
            if not self._slurm_may_tell(job_id, status, recorded):
                observations[job_id] = Observation(seen, final=seen.state.is_terminal)
                continue
            # Only Slurm's accounting can tell a qdel from a walltime kill, or name the signal of
            # a script killed outright. Asked in the next poll; the poller waits for it (within its
            # grace for the squeue -> sacct gap), and without sacct the recorded end stands.
            record = records.get(job_id)
            if accounting_rc is None or (accounting_rc == 0 and (record is None or not record.state.is_terminal)):
                self._ask_slurm.add(job_id)
                observations[job_id] = Observation(seen, final=False)
                continue
            self._ask_slurm.discard(job_id)
            final = seen if record is None or not record.state.is_terminal else with_slurm_record(seen, record)
            observations[job_id] = Observation(final, final=True)
        return PollReport(observations=observations, notices=poll.errors)

    def _slurm_may_tell(self, job_id: str, status: JobStatus, recorded: RecordedExit | None) -> bool:
        """A finished job of the Slurm-backed wrappers (bare ids; Torque's carry a server name)
        whose qstat has no exit status and whose script recorded nothing, or a signal."""
        if self.flavour is not PbsFlavour.TORQUE or not job_id.isdigit():
            return False
        if status.state is not JobState.FAILED or status.exit_code is not None:
            return False
        if recorded is None:
            return True
        return not recorded.array_element and (
            recorded.trapped is not None or signal_of_shell_status(recorded.code) is not None
        )

    def cancel_script(self, job_ids: Sequence[str]) -> str:
        return cancel_script(job_ids)
