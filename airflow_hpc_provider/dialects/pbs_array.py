"""Mapped task instances as one PBS job array (PBS Pro ``-J``, Torque ``-t``), as pure functions:
the array's batch script, the one round trip that adopts or submits its elements, and reading
what that round trip printed.

The elements share everything but their command and env values
(:class:`~airflow_hpc_provider.dialects.array_elements.ArrayElement`). The array's script is the
one-job script (``head``: shebang, ``#PBS`` lines, the exit recorder, setup) with a prologue that
finds which element this array index runs, sends its output to the task instance's own log and
takes its own env values from their carriers, and each element's command behind a ``case``.

PBS Pro's ``-J`` takes a range (``0-4``, at least two indexes), not a list, so the elements a round
trip does not adopt are numbered again from 0: the submit script writes which element each array
index runs into the batch file (``_airflow_hpc_elements='0 2 5'``: element indexes, not secrets),
and a lone element on PBS Pro is a single job. Its output goes to its own log through ``exec`` (the
same file as a job of its own would write: ``<task digest>-try<n>.log``), so it streams on PBS Pro
too, where ``-o`` files are only copied back when a job ends.

Element ids are PBS's: ``123[4].server`` on PBS Pro and Torque (qsub prints ``123[].server``). The
Torque-compatible wrappers around Slurm print a bare ``123`` and cannot name an element (their
qstat shows started elements under raw Slurm ids, their qdel of ``123[4]`` deletes the whole array:
tests/fixtures/pbs/README.md), so there an element is ``123[4]`` here and Slurm's ``123_4`` on the
cluster (:func:`~airflow_hpc_provider.dialects.pbs_qstat.slurm_name`): polled and cancelled through Slurm.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.dialects.array_elements import ArrayElement, command_lines, own_env_lines, split_env
from airflow_hpc_provider.dialects.pbs import cursor_path, jobs_record, log_path, name_base
from airflow_hpc_provider.dialects.pbs_exits import exit_dir
from airflow_hpc_provider.dialects.pbs_qstat import FINISHED_STATES, JOB_ID, PbsFlavour
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.errors import ConnectionConfigError

# PBS Pro's default max_array_size; Torque's max_job_array_size is unset (no cap) by default.
DEFAULT_MAX_ARRAY_SIZE = 10000

# The server's largest array: PBS Pro's max_array_size, Torque's max_job_array_size (``qmgr``),
# or, on the Torque-compatible wrappers around Slurm, Slurm's MaxArraySize. One number, or nothing.
MAX_ARRAY_SIZE_SCRIPT = (
    "if command -v qmgr >/dev/null 2>&1; then\n"
    '  qmgr -c \'list server\' 2>/dev/null | awk \'$1 == "max_array_size" || $1 == "max_job_array_size" '
    "{ print $3; exit }'\n"
    "elif command -v scontrol >/dev/null 2>&1; then\n"
    "  scontrol show config | awk '$1 == \"MaxArraySize\" { print $3 }'\n"
    "fi\n"
)

# Where the one-job script (pbs.render_script with an exit directory) starts recording its exit,
# and where its payload's background block ends: the prologue goes before the first, the
# elements' commands before the second.
RECORDER_START = "_airflow_hpc_exit() {\n"
BACKGROUND_END = "} &\n_airflow_hpc_child=$!\n"

# A remote path the Slurm-backed qsub wrapper passes through its own shell unquoted.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+~-]+$")
_SHEBANG = re.compile(r"^#!\s*(/[A-Za-z0-9_./+-]+)")


@dataclass(frozen=True)
class PbsElementOutcome:
    """What the round trip did for one element: submitted it, or adopted the job an earlier
    trigger of its task instance submitted (``try_number``: the try that submitted it, which
    names its log)."""

    index: int
    job_id: str
    adopted: bool
    try_number: int
    state: str | None = None

    @property
    def ended(self) -> bool:
        return self.adopted and (self.state or "").strip().upper()[:1] in FINISHED_STATES


def parse_max_array_size(text: str) -> int | None:
    """The number :data:`MAX_ARRAY_SIZE_SCRIPT` printed, or None when it printed none."""
    words = text.split()
    return int(words[0]) if words and words[0].isdigit() and int(words[0]) > 0 else None


def can_hold(head: str) -> bool:
    """Whether the one-job script records its exit (a POSIX shell script does): the prologue and
    the commands go at its seams."""
    return RECORDER_START in head and BACKGROUND_END in head


def array_script_parts(head: str, elements: Sequence[ArrayElement], log_dir: str) -> tuple[str, str]:
    """The array's batch script, in two parts: the submit script writes which element each array
    index runs (``_airflow_hpc_elements``) between them.

    ``head`` is the one-job script rendered with an exit directory and without a command; for a
    whole script by the user (no commands), every element runs that script.
    """
    if not can_hold(head):
        raise ValueError("the batch script does not record its exit (not a POSIX shell script): no array")
    cut = head.index(RECORDER_START)
    before, after = head[:cut], head[cut:]
    if any(element.command for element in elements):
        end = after.rindex(BACKGROUND_END)
        after = after[:end] + command_lines(elements, "${_airflow_hpc_e}") + after[end:]
    return before, _prologue(elements, log_dir) + after


def _prologue(elements: Sequence[ArrayElement], log_dir: str) -> str:
    # The index variable is whichever the flavour sets (PBS Pro, Torque, the wrappers' Slurm); a
    # lone element of a PBS Pro round trip is a single job, index 0.
    logs = "".join(
        f"{element.index}) _airflow_hpc_log={_element_log(log_dir, element)}; "
        f"AIRFLOW_HPC_KEY={quote(element.key.tag)} ;;\n"
        for element in elements
    )
    return (
        "_airflow_hpc_n=${PBS_ARRAY_INDEX:-${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-0}}}\n"
        "_airflow_hpc_e=$(printf '%s\\n' $_airflow_hpc_elements | sed -n \"$((_airflow_hpc_n + 1))p\")\n"
        'case "$_airflow_hpc_e" in\n'
        + logs
        + '*) echo "airflow-hpc: no element at array index $_airflow_hpc_n ($_airflow_hpc_elements)" >&2; exit 1 ;;\n'
        "esac\n"
        # Only this element's output, in its task instance's own log.
        'exec >>"$_airflow_hpc_log" 2>&1\n'
        # The id this provider knows the element by (the exit record is named after it): the
        # wrappers' PBS_JOBID is a raw Slurm id.
        'if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then PBS_JOBID="${SLURM_ARRAY_JOB_ID}[${SLURM_ARRAY_TASK_ID-}]"; fi\n'
        "export PBS_JOBID AIRFLOW_HPC_KEY\n"
        + own_env_lines(elements, "${_airflow_hpc_e}")
        # Renumbered indexes mean nothing to the command (and an index left set reads as an
        # array this provider did not ask for).
        + "unset PBS_ARRAYID PBS_ARRAY_INDEX SLURM_ARRAY_TASK_ID\n"
    )


def _element_log(log_dir: str, element: ArrayElement) -> str:
    return remote_shell.home_relative(log_path(log_dir, element.key.task_digest, element.key.try_number))


def submit_script(
    flavour: PbsFlavour,
    head: str,
    elements: Sequence[ArrayElement],
    *,
    job_name: str,
    group: str,
    log_dir: str,
    env: Mapping[str, str],
    throttle: int | None = None,
) -> str:
    """One round trip for a chunk: adopt each element's earlier job, submit the rest as one array.

    Under a lock, each element's record of jobs (the one-job record, ``<id> <try>`` lines) is read
    and its newest job the scheduler still knows, or that recorded its exit, is adopted: one of
    this try even after a trigger watched it (its triggerer restarted), one of an earlier try only
    if no trigger watched it. The rest go in ONE qsub, numbered from 0; every element's id is
    appended to its record before any is printed, so a triggerer killed at any point leaves them
    findable and its successor adopts them. Hang-ups are ignored: a dropped connection does not
    stop the script between qsub and the records. Env values are exported in the submitting
    shell, never put on a command line (see :func:`~airflow_hpc_provider.dialects.pbs_submit.submit_script`).
    """
    if not _SAFE_PATH.match(log_dir):
        raise ConnectionConfigError(
            f"log directory {log_dir!r}: use only letters, digits and '_./+~-' (qsub hands it to a shell)"
        )
    shared, own = split_env(elements)
    before, after = array_script_parts(head, elements, log_dir)
    folder = remote_shell.home_relative(log_dir)
    lock = remote_shell.home_relative(f"{log_dir.rstrip('/')}/arrays.lock")
    out = remote_shell.home_relative(f"{log_dir.rstrip('/')}/arrays.out")
    batch_file = remote_shell.home_relative(f"{log_dir.rstrip('/')}/array-XXXXXXXXXX.pbs")
    names = sorted({*env, *shared, *own})
    qsub = ["qsub", "-N", quote(f"{name_base(job_name)}-{group[:12]}"), "-o", out, "-j", "oe"]
    if flavour is PbsFlavour.PBS_PRO:
        if names:
            qsub += ["-v", quote(",".join(names))]
    else:
        qsub.append("-V")
    interpreter = _SHEBANG.match(head)
    if interpreter:
        qsub += ["-S", quote(interpreter.group(1))]
    qsub += ["$_range", '"$_f"']
    if flavour is PbsFlavour.PBS_PRO:
        # -J needs a range of at least two indexes; a lone element is a job of its own.
        # (max_run_subjobs is an array's attribute: a lone job gets none.)
        limit = f" -W max_run_subjobs={int(throttle)}" if throttle else ""
        range_line = f'  if [ "$_k" -ge 2 ]; then _range="-J 0-$((_k - 1)){limit}"; else _range=; fi\n'
    else:
        spread = f"%{int(throttle)}" if throttle else ""
        range_line = f'  _range="-t 0-$((_k - 1)){spread}"\n'
    adopt = "".join(
        f"_pick=$(_pbs_adopt {_adoption_args(log_dir, element)}) || exit 1\n"
        f'if [ -n "$_pick" ]; then printf \'ADOPTED {element.index} %s\\n\' "$_pick"; '
        f'else _todo="$_todo {element.index}"; fi\n'
        for element in elements
    )
    record = "".join(
        f"      {element.index}) printf '%s %s\\n' \"$_eid\" {int(element.key.try_number)} >> "
        f"{remote_shell.home_relative(jobs_record(log_dir, element.key.task_digest))} "
        '|| echo "could not record job $_eid" >&2 ;;\n'
        for element in elements
    )
    return (
        "trap '' HUP PIPE\n"
        f"[ -d {folder} ] || mkdir -p -- {folder} || exit 1\n"
        f"exec 9>>{lock}\n"
        "flock -w 120 9 || { echo 'could not take the array submission lock' >&2; exit 1; }\n"
        + _adoption_function(flavour, log_dir)
        + "_todo=\n"
        + adopt
        + 'if [ -n "$_todo" ]; then\n'
        "  set -- $_todo; _k=$#\n"
        f"  _f=$(mktemp {batch_file}) || exit 1\n"
        "  {\n"
        + remote_shell.heredoc(before, feed="  cat")
        + '  printf "_airflow_hpc_elements=\'%s\'\\n" "${_todo# }"\n'
        + remote_shell.heredoc(after, feed="  cat")
        + "  } > \"$_f\" || { echo 'could not write the batch script' >&2; exit 1; }\n"
        + remote_shell.export_lines({**env, **shared, **own})
        + range_line
        + "  _id=$("
        + " ".join(qsub)
        + ') || { _rc=$?; printf \'%s\\n\' "$_id" >&2; exit "$_rc"; }\n'
        # qsub may print warnings first (the wrapper: '-S is ignored'); the id is the last word.
        "  _id=$(printf '%s\\n' \"$_id\" | awk 'NF { w = $NF } END { print w }')\n"
        "  case $_id in [0-9]*) ;; *) printf 'qsub printed no job id: %s\\n' \"$_id\" >&2; exit 1 ;; esac\n"
        "  _n=0; _ids=\n"
        "  for _e in $_todo; do\n"
        # 123[].server -> 123[4].server; the wrappers' bare 123 -> 123[4]; a lone job keeps its id.
        '    if [ -z "$_range" ]; then _eid=$_id\n'
        "    else case $_id in\n"
        '      *"[]"*) _eid="${_id%%\\[\\]*}[$_n]${_id#*\\[\\]}" ;;\n'
        '      *) _eid="$_id[$_n]" ;;\n'
        "    esac; fi\n"
        # Recorded before any is printed: a link that drops now cannot lose an element.
        "    case $_e in\n" + record + "    esac\n"
        '    _ids="$_ids $_e:$_eid"; _n=$((_n + 1))\n'
        "  done\n"
        '  for _p in $_ids; do printf \'SUBMITTED %s %s\\n\' "${_p%%:*}" "${_p#*:}"; done\n'
        "fi\n"
    )


def _adoption_args(log_dir: str, element: ArrayElement) -> str:
    claimed = remote_shell.home_relative(f"{log_dir.rstrip('/')}/{element.key.task_digest}-try")
    record = remote_shell.home_relative(jobs_record(log_dir, element.key.task_digest))
    return f"{record} {claimed} {int(element.key.try_number)}"


def _adoption_function(flavour: PbsFlavour, log_dir: str) -> str:
    """``_pbs_adopt RECORD CLAIMED TRY``: prints ``<id> <try> <state>`` of the job to adopt, or nothing.

    A record line of this try is adopted even if a trigger watched it (``CLAIMED<try>.cursor.watched``);
    one of an earlier try only if none did. A job counts while the scheduler knows it (an element
    of the wrappers: Slurm's squeue, then its accounting) or once its script recorded its exit; an error of qstat other
    than "unknown job" stops the submission: submitting blind could run a live job twice.
    """
    qstat = "qstat -x -f" if flavour is PbsFlavour.PBS_PRO else "qstat -f"
    exits = remote_shell.home_relative(exit_dir(log_dir))
    return (
        "_pbs_state() {\n"
        "  _st=\n"
        "  case $1 in\n"
        "    *\\[*\\])\n"
        '      if [ -z "${1#*\\]}" ] && command -v squeue >/dev/null 2>&1; then\n'
        "        _a=${1%%\\[*}; _i=${1#*\\[}; _i=${_i%\\]}\n"
        '        _st=$(squeue -h -r -t all -j "${_a}_${_i}" -o %t 2>/dev/null | head -n 1)\n'
        # Gone from squeue (MinJobAge): Slurm's accounting still knows an element that ended.
        '        [ -n "$_st" ] || _st=$(sacct -n -X -P -j "${_a}_${_i}" -o State 2>/dev/null | head -n 1)\n'
        "        case $_st in PD|PENDING) _st=Q ;; R|CG|S|CF|RUNNING) _st=R ;; '') ;; *) _st=C ;; esac\n"
        "      fi ;;\n"
        "  esac\n"
        '  if [ -z "$_st" ]; then\n'
        f'    _q=$({qstat} "$1" 2>&1); _rc=$?\n'
        '    case $_rc in 0|153) ;; *) printf \'qstat exited %s: %s\\n\' "$_rc" "$_q" >&2; return 1;; esac\n'
        f"    _st=$(printf '%s\\n' \"$_q\" | awk {quote(_STATE_AWK)})\n"
        "  fi\n"
        f'  if [ -z "$_st" ] && [ -f {exits}/"${{1%%.*}}" ]; then _st=F; fi\n'
        "  printf '%s' \"$_st\"\n"
        "}\n"
        "_pbs_adopt() {\n"
        '  [ -f "$1" ] || return 0\n'
        f'  for _c in $(awk {quote(_RECORD_AWK)} "$1"); do\n'
        "    _j=${_c%:*}; _y=${_c##*:}\n"
        '    if [ "$_y" != "$3" ] && [ -e "$2$_y.cursor.watched" ]; then continue; fi\n'
        '    _s=$(_pbs_state "$_j") || return 1\n'
        '    if [ -n "$_s" ]; then printf \'%s %s %s\\n\' "$_j" "$_y" "$_s"; return 0; fi\n'
        "  done\n"
        "}\n"
    )


# Reads a record (``<id> <try>`` lines); prints ``<id>:<try>`` newest first. Ids and tries are
# checked, so nothing else reaches the shell words built from them.
_RECORD_AWK = r"""
NF == 2 && $1 ~ /^[0-9]+(\[[0-9]*\])?(\.[A-Za-z0-9_.-]+)?$/ && $2 ~ /^[0-9]+$/ { a[n++] = $1 ":" $2 }
END { for (i = n - 1; i >= 0; i--) print a[i] }
"""

# The first job_state of `qstat -f` text (four spaces on PBS, a tab on the wrapper).
_STATE_AWK = r"""/^[ \t]+job_state = / { v = $0; sub(/^[^=]*= */, "", v); print v; exit }"""


def parse_submit_output(stdout: str, elements: Sequence[ArrayElement]) -> dict[int, PbsElementOutcome]:
    """What :func:`submit_script` printed, per element index; every element must have an answer."""
    tries = {element.index: int(element.key.try_number) for element in elements}
    outcomes: dict[int, PbsElementOutcome] = {}
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word not in ("ADOPTED", "SUBMITTED"):
            continue
        parts = rest.split()
        ok = len(parts) >= 2 and parts[0].isdigit() and int(parts[0]) in tries and bool(JOB_ID.match(parts[1]))
        if word == "ADOPTED":
            ok = ok and len(parts) >= 3 and parts[2].isdigit()
        if not ok:
            raise ValueError(f"an unreadable line in the array submission's output: {line!r}")
        index = int(parts[0])
        if word == "ADOPTED":
            state = " ".join(parts[3:]) or None
            outcomes[index] = PbsElementOutcome(index, parts[1], True, int(parts[2]), state)
        else:
            outcomes[index] = PbsElementOutcome(index, parts[1], False, tries[index])
    missing = [index for index in tries if index not in outcomes]
    if missing:
        raise ValueError(f"no job id for array element(s) {missing} in the submission's output: {stdout!r}")
    return outcomes


def element_paths(log_dir: str, task_digest: str, outcome: PbsElementOutcome) -> tuple[str, str]:
    """The element's log and cursor: its task instance's, of the try that submitted it."""
    return (
        log_path(log_dir, task_digest, outcome.try_number),
        cursor_path(log_dir, task_digest, outcome.try_number),
    )
