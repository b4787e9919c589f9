"""Submitting a PBS job in one round trip: take a per-task lock, adopt an earlier try's job, or
write the batch script and ``qsub`` it; then read what the submission printed.

Facts this module relies on, about the Torque-compatible wrappers around Slurm (Debian
``slurm-wlm-torque``, checked on the test cluster): ``qsub`` prints a bare id and builds an
``sbatch`` command line as one string run by a shell, so every argument we give it must be free
of shell metacharacters; ``-v NAME`` copies the value of ``$NAME`` into that string (and onto the
command line) and turns on ``--export=none``; ``-S`` is ignored with a warning (sbatch honours the
shebang instead); it does not read a script from stdin.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.dialects.pbs import job_name, jobs_record, log_path, script_path
from airflow_hpc_provider.dialects.pbs_exits import exit_dir
from airflow_hpc_provider.dialects.pbs_qstat import FINISHED_STATES, JOB_ID, PbsFlavour
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.errors import ConnectionConfigError
from airflow_hpc_provider.jobs import JobKey, JobSpec

# A remote path the Slurm-backed qsub wrapper passes through its own shell unquoted.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+~-]+$")
_SHEBANG = re.compile(r"^#!\s*(/[A-Za-z0-9_./+-]+)")


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
    longer shows counts when its script recorded an exit status (see
    :func:`~airflow_hpc_provider.dialects.pbs.render_script`); one with neither is gone, and a new
    job is submitted.

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
        + "  _out=$("
        + " ".join(qsub)
        + ') || { _rc=$?; printf \'%s\\n\' "$_out" >&2; exit "$_rc"; }\n'
        # qsub may print warnings first (the wrapper: '-S is ignored'); the id is the last word.
        "  _id=$(printf '%s\\n' \"$_out\" | awk 'NF { w = $NF } END { print w }')\n"
        # An exit 0 without an id is reported with what qsub said, and nothing is recorded.
        "  case $_id in [0-9]*) ;; *) printf 'qsub printed no job id: %s\\n' \"$_out\" >&2; exit 1 ;; esac\n"
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
    if not job_id or try_number is None or not JOB_ID.match(job_id):
        raise ValueError(f"no job id in the submission's output: {stdout!r}")
    return PbsSubmitOutcome(job_id=job_id, adopted=adopted, state=state, try_number=try_number)
