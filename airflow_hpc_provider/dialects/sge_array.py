"""Mapped task instances as one Grid Engine job array (``qsub -t``), as pure functions: the array's
batch script, the one round trip that adopts or submits its elements, and reading its answer.

As on Slurm (:mod:`~airflow_hpc_provider.dialects.slurm_array`; the shared parts are in
:mod:`~airflow_hpc_provider.dialects.array_elements`): each element is one Airflow task instance with
a key of its own; the shared head runs the element's command behind a ``case``, each through
``eval``; per-element env values travel in qsub's environment (``-v`` names them, the values are
exported in the submitting shell, fed on stdin) under carrier names only the element's branch reads.

What differs on Grid Engine (SoGE 8.1.9, seen on the test cluster; tests/fixtures/sge/README.md):

* ``-t`` takes one range ``n-m:s`` whose tasks are numbered from 1 (``-t 0-2`` is refused), and
  ``qsub -terse -t 1-3`` answers ``42.1-3:1``. Once some elements of a chunk were adopted, the
  rest is not a range: each submission numbers its tasks ``1..k`` and exports ``_AHE_TASKS``,
  the chunk's element indexes in task order (digits and commas, no value of the user's), from
  which the script picks its element. The element's job id is ``<job>.<task>``.
* ``max_aj_tasks`` (``qconf -sconf``, default 75000, 0: no cap) caps the *number* of tasks, not
  the index (``-t 7-12`` passes a cap of 6): a chunk is sized, never offset.
* ``-o`` expands ``$TASK_ID`` as it does ``$JOB_ID``: each element writes its own file.
* ``-tc N`` caps how many tasks of the array run at once (Slurm's ``%N``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.dialects.array_elements import ArrayElement, element_script, read_answers, split_env
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.dialects.sge import TASK_LIST_AWK, jobs_record
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobKey

# SoGE's own default for max_aj_tasks, also the chunk size where the site set no cap (0): one
# chunk's script, with every element's command, must still be read by qsub in one piece.
DEFAULT_MAX_ARRAY_SIZE = 75000

# Asks the cluster for its max_aj_tasks: one line, the number (any user may read the configuration).
MAX_ARRAY_SIZE_SCRIPT = "qconf -sconf | awk '$1 == \"max_aj_tasks\" { print $2 }'\n"

# The variable the array script's ``case`` reads: the element this task runs.
INDEX_VARIABLE = "_AHE_ELEMENT"

# Grid Engine numbers this submission's tasks 1..k; _AHE_TASKS says which element each one runs.
SELECT_ELEMENT = (
    "# Grid Engine numbers this submission's tasks from 1: _AHE_TASKS lists the element each runs\n"
    f"{INDEX_VARIABLE}=$(printf '%s\\n' \"${{_AHE_TASKS-}}\" | "
    "awk -F, -v t=\"${SGE_TASK_ID-}\" 't ~ /^[0-9]+$/ && t > 0 { print $t }')\n"
    "unset _AHE_TASKS\n"
)

_JOB_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHEBANG = re.compile(r"^#!\s*(/[A-Za-z0-9_./+-]+)")
_ELEMENT_ID = re.compile(r"\d+(\.\d+)?")
ENDED_STATES = ("COMPLETED", "FAILED")


@dataclass(frozen=True)
class ElementOutcome:
    """What the round trip did for one element: submitted it, or adopted an earlier job of its.

    ``state``: an adopted job's -- qstat's letters while Grid Engine lists it (``r``, ``qw``),
    ``COMPLETED``/``FAILED`` once it is only in accounting (the poll reads the details).
    """

    index: int
    job_id: str
    adopted: bool
    state: str | None = None

    @property
    def ended(self) -> bool:
        return self.adopted and self.state in ENDED_STATES


def parse_max_array_size(text: str) -> int | None:
    """What :data:`MAX_ARRAY_SIZE_SCRIPT` printed: the cap, :data:`DEFAULT_MAX_ARRAY_SIZE` for 0
    (no cap), None when it printed no number."""
    words = text.split()
    if not words or not words[0].isdigit():
        return None
    return int(words[0]) or DEFAULT_MAX_ARRAY_SIZE


def element_log_path(log_dir: str, job_id: str) -> str:
    """Where element ``<job>.<task>`` writes its output (``-o`` with ``$JOB_ID.$TASK_ID``)."""
    return f"{log_dir.rstrip('/')}/array-{job_id}.log"


def array_script(head: str, elements: Sequence[ArrayElement]) -> str:
    """The array's one batch script: ``head``, the pick of the element, each element's command
    behind its index. A whole script by the user (no commands) is every element's script as is."""
    if not any(element.command for element in elements):
        return head
    return element_script(head + SELECT_ELEMENT, elements, index_variable=INDEX_VARIABLE)


# Over `qstat -xml`: prints "<id> <state>" of the first id of the comma list ``ids`` (newest first)
# that Grid Engine lists: a plain job by its number, an element <job>.<task> by its task's own line
# or by the pending line whose task list holds it.
_LISTED_AWK = (
    TASK_LIST_AWK
    + r"""
function value(line) { sub(/^[ \t]*<[^>]*>/, "", line); sub(/<\/.*$/, "", line); return line }
BEGIN { n = split(ids, order, ",") }
/<JB_job_number>/ { id = value($0) }
/<state>/ { st = value($0) }
/<tasks>/ { tl = value($0) }
/<\/job_list>/ {
  for (i = 1; i <= n; i++) {
    d = index(order[i], ".")
    if (d == 0) { if (order[i] == id && !(order[i] in known)) known[order[i]] = st; continue }
    if (substr(order[i], 1, d - 1) == id && tl != "" && in_tasks(substr(order[i], d + 1), tl) && !(order[i] in known))
      known[order[i]] = st
  }
  id = ""; st = ""; tl = ""
}
END { for (i = 1; i <= n; i++) if (order[i] in known) { print order[i], known[order[i]]; exit } }
"""
)

# Over `qacct -j <job>`: COMPLETED or FAILED for the last record of ``id`` (a plain job, or one
# task <job>.<task>), nothing when accounting has none.
_ENDED_AWK = r"""
function close_record() {
  if (jn != "" && (tid ~ /^[0-9]+$/ ? jn "." tid : jn) == id)
    out = (failed == "0" && code == "0") ? "COMPLETED" : "FAILED"
  jn = ""; tid = ""; failed = ""; code = ""
}
/^=====/ { close_record() }
$1 == "jobnumber" { jn = $2 } $1 == "taskid" { tid = $2 }
$1 == "failed" { failed = $2 } $1 == "exit_status" { code = $2 }
END { close_record(); if (out != "") print out }
"""

# A shell function: ``_adopt RECORD CLAIMED [TRY]`` sets ``_pick`` to "<id> <state>" of the newest
# job in the task instance's record that Grid Engine still lists or accounting knows, and that no
# trigger watched (no ``CLAIMED<id>.cursor.watched``) unless the record says it was submitted for
# try TRY -- the rule of Slurm's ``_adopt`` (:data:`~airflow_hpc_provider.dialects.slurm.ADOPTION_FUNCTION`).
# Record lines are ``<id>`` or ``<id> <try>``, ids plain jobs or elements. ``qstat -xml`` is asked
# at most once per script (it lists all the user's jobs); ``qacct -j`` once per job number not listed.
# Fails when Grid Engine cannot be asked: submitting blind could run a job twice. Not run in a
# subshell, so the one qstat answer (and each job's qacct answer) serves every element of the chunk.
ADOPTION_FUNCTION = (
    "_qok=\n"
    "_adopt() {\n"
    "  _pick= _mine=\n"
    '  if [ -f "$1" ]; then\n'
    '    for _j in $(awk -v t="${3-}" \'$1 !~ /^[0-9]+([.][0-9]+)?$/ { next } '
    'NF == 1 { a[n++] = $1 } NF == 2 { a[n++] = ($2 == t ? "=" : "") $1 } '
    'END { for (i = n - 1; i >= 0; i--) print a[i] }\' "$1"); do\n'
    '      case $_j in =*) _mine="$_mine${_mine:+,}${_j#=}" ;; '
    '*) [ -e "$2$_j".cursor.watched ] || _mine="$_mine${_mine:+,}$_j" ;; esac\n'
    "    done\n"
    "  fi\n"
    '  [ -n "$_mine" ] || return 0\n'
    '  if [ -z "$_qok" ]; then\n'
    '    _q=$(qstat -xml -u "$(id -un)" 2>&1) || { printf \'qstat exited %s: %s\\n\' "$?" "$_q" >&2; return 1; }\n'
    "    _qok=1\n"
    "  fi\n"
    f'  _pick=$(printf \'%s\\n\' "$_q" | awk -v ids="$_mine" {quote(_LISTED_AWK)})\n'
    '  [ -z "$_pick" ] || return 0\n'
    # qacct reads the whole accounting file: asked once per job number per script (the elements
    # of one array share it), its answers kept in a directory removed when the script ends.
    '  [ -n "${_ad-}" ] || { _ad=$(mktemp -d) || return 1; trap \'rm -rf "$_ad"\' EXIT; }\n'
    "  for _j in $(printf '%s' \"$_mine\" | tr , ' '); do\n"
    "    _n=${_j%%.*}\n"
    # An id accounting does not know (deleted while pending, or not ended) is an answer, not a failure.
    '    [ -f "$_ad/$_n" ] || qacct -j "$_n" > "$_ad/$_n" 2>&1 || grep -q "not found" "$_ad/$_n" || '
    '{ printf \'qacct failed: %s\\n\' "$(cat "$_ad/$_n")" >&2; rm -f "$_ad/$_n"; return 1; }\n'
    f'    _st=$(awk -v id="$_j" {quote(_ENDED_AWK)} "$_ad/$_n")\n'
    '    if [ -n "$_st" ]; then _pick="$_j $_st"; return 0; fi\n'
    "  done\n"
    "}\n"
)


def adoption_args(log_dir: str, key: JobKey) -> str:
    """The arguments of ``_adopt`` for one task instance: its jobs recorded for this try are its
    own even once a trigger watched them (its triggerer restarted)."""
    record = remote_shell.home_relative(jobs_record(log_dir, key))
    claimed = remote_shell.home_relative(f"{log_dir.rstrip('/')}/{key.task_digest}-")
    return f"{record} {claimed} {int(key.try_number)}"


def submit_script(
    batch_script: str,
    elements: Sequence[ArrayElement],
    *,
    job_name: str,
    log_dir: str,
    env: Mapping[str, str],
    working_dir: str | None = None,
    throttle: int | None = None,
) -> str:
    """One round trip for a chunk: adopt each element's earlier job, submit the rest as one array.

    Under one lock beside the logs, each element's record is read and its newest job Grid Engine
    lists or accounting knows is adopted (``_adopt``); the rest go in ONE ``qsub -t 1-k``, and
    every new element id ``<job>.<task>`` is appended with its try to its task instance's record
    before any is printed, so a triggerer killed at any point leaves them findable and its
    successor adopts them instead of submitting again. Hang-ups are ignored: a dropped connection
    does not stop the script between ``qsub`` and the records. No value of ``env`` or of the
    elements' env reaches a command line: they are exported here and named in ``-v``.
    """
    if not _JOB_NAME.fullmatch(job_name):
        raise JobSpecError(f"array job name {job_name!r}: Grid Engine needs a letter first, then [A-Za-z0-9_.-]")
    shared, own = split_env(elements)
    names = [*env, *shared, *own]
    for name in names:
        if not _ENV_NAME.fullmatch(name):
            raise JobSpecError(f"env name {name!r} is not a valid environment variable name")
    log_dir = log_dir.rstrip("/")
    log_dir_arg = remote_shell.home_relative(log_dir)
    lock = remote_shell.home_relative(f"{log_dir}/arrays.lock")
    interpreter = _SHEBANG.match(batch_script)
    qsub = ["qsub", "-terse", "-N", quote(job_name), "-j", "y"]
    qsub += ["-o", remote_shell.home_relative(f"{log_dir}/array-$JOB_ID.$TASK_ID.log")]
    if working_dir:
        qsub += ["-wd", remote_shell.home_relative(working_dir)]
    qsub += ["-S", quote(interpreter.group(1) if interpreter else "/bin/bash")]
    qsub += ["-v", quote(",".join(dict.fromkeys([*names, "_AHE_TASKS"])))]
    qsub += ['-t 1-"$_n"'] + ([f"-tc {int(throttle)}"] if throttle else [])
    adopt = "".join(
        f"_adopt {adoption_args(log_dir, element.key)} || exit 1\n"
        f'if [ -n "$_pick" ]; then printf \'ADOPTED {element.index} %s\\n\' "$_pick"; '
        f'else _todo="$_todo${{_todo:+,}}{element.index}"; fi\n'
        for element in elements
    )
    record = "".join(
        f'    {element.index}) printf \'%s.%s {int(element.key.try_number)}\\n\' "$_id" "$_t" >> '
        f"{remote_shell.home_relative(jobs_record(log_dir, element.key))} "
        '|| echo "could not record job $_id.$_t" >&2 ;;\n'
        for element in elements
    )
    each_task = "  _t=0\n  for _e in $(printf '%s' \"$_todo\" | tr , ' '); do\n    _t=$((_t + 1))\n"
    return (
        "trap '' HUP PIPE\n"
        f"[ -d {log_dir_arg} ] || mkdir -p -- {log_dir_arg} || exit 1\n"
        f"exec 9>>{lock}\n"
        "flock -w 120 9 || { echo 'could not take the array submission lock' >&2; exit 1; }\n"
        + ADOPTION_FUNCTION
        + "_todo=\n"
        + adopt
        + 'if [ -n "$_todo" ]; then\n'
        + remote_shell.export_lines({**env, **shared, **own})
        + "  _AHE_TASKS=$_todo; export _AHE_TASKS\n"
        "  _n=$(printf '%s\\n' \"$_todo\" | awk -F, '{ print NF }')\n"
        "  _id=$(" + remote_shell.heredoc(batch_script, feed=" ".join(qsub)) + ") || exit $?\n"
        "  _id=${_id%%.*}\n"  # qsub -terse -t answers 42.1-3:1
        "  case $_id in ''|*[!0-9]*) printf 'qsub answered %s\\n' \"$_id\" >&2; exit 1 ;; esac\n"
        # Recorded before any is printed: a link that drops now cannot lose an element.
        + each_task
        + "    case $_e in\n"
        + record
        + "    esac\n  done\n"
        + each_task
        + '    printf \'SUBMITTED %s %s.%s\\n\' "$_e" "$_id" "$_t"\n  done\n'
        "fi\n"
    )


def parse_submit_output(stdout: str, indexes: Sequence[int]) -> dict[int, ElementOutcome]:
    """What :func:`submit_script` printed, per element index; every element must have an answer."""
    answers = read_answers(stdout, indexes, _ELEMENT_ID)
    return {index: ElementOutcome(index, *answer) for index, answer in answers.items()}
