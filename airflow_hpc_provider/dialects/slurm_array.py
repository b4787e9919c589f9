"""Mapped task instances as one Slurm job array, as pure functions: the array's batch script, the
one round trip that adopts or submits its elements, and reading what that round trip printed.

Each element is one Airflow task instance (one ``map_index``) with a key of its own. The elements
of one array share everything but their command (:class:`ArrayElement`): the shared batch script
(``head``: shebang, ``#SBATCH`` lines, setup) runs the element's command behind a ``case`` on
``SLURM_ARRAY_TASK_ID``, each through ``eval`` so a command that does not parse fails its own
element only. Values of the tasks' ``env`` travel as a single job's do (sbatch's environment, fed
on stdin), never on disk or on a command line: a value every element shares under its own name, a
value of one element under a carrier name (``_AHE_<index>_<NAME>``) that only its branch reads
into ``NAME``, before every carrier is unset, so an element sees its own values only.

Slurm caps the array *index* (below ``MaxArraySize``), so a chunk's elements are numbered from 0
whatever their map indexes; the element's job id is ``<array>_<index>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.dialects.array_elements import ArrayElement, carrier, element_script, read_answers, split_env
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.dialects.slurm import ADOPTION_FUNCTION, adoption_args, jobs_record
from airflow_hpc_provider.dialects.slurm_status import map_state
from airflow_hpc_provider.jobs import JobKey

# Shared with Grid Engine's arrays (dialects/array_elements.py); importable from here as before.
__all__ = [
    "DEFAULT_MAX_ARRAY_SIZE",
    "MAX_ARRAY_SIZE_SCRIPT",
    "ArrayElement",
    "ElementOutcome",
    "array_script",
    "carrier",
    "element_log_path",
    "parse_max_array_size",
    "parse_submit_output",
    "split_env",
    "submit_script",
]

# Slurm's own default, used when the cluster's configuration cannot be read (said in the task log).
DEFAULT_MAX_ARRAY_SIZE = 1001

# Asks the cluster for its MaxArraySize: one line, the number.
MAX_ARRAY_SIZE_SCRIPT = "scontrol show config | awk '$1 == \"MaxArraySize\" { print $3 }'\n"


@dataclass(frozen=True)
class ElementOutcome:
    """What the round trip did for one element: submitted it, or adopted an earlier try's job."""

    index: int
    job_id: str
    adopted: bool
    state: str | None = None

    @property
    def ended(self) -> bool:
        return self.adopted and self.state is not None and map_state(self.state.split(" ")[0]).is_terminal


def parse_max_array_size(text: str) -> int | None:
    """The number :data:`MAX_ARRAY_SIZE_SCRIPT` printed, or None when it printed none."""
    words = text.split()
    return int(words[0]) if words and words[0].isdigit() and int(words[0]) > 0 else None


def element_log_path(log_dir: str, job_id: str) -> str:
    """Where element ``<array>_<index>`` writes its output (``--output`` with ``%A_%a``)."""
    return f"{log_dir.rstrip('/')}/array-{job_id}.log"


def array_script(head: str, elements: Sequence[ArrayElement]) -> str:
    """The array's one batch script: ``head``, then each element's command behind its index
    (``SLURM_ARRAY_TASK_ID``; see :func:`~airflow_hpc_provider.dialects.array_elements.element_script`)."""
    return element_script(head, elements, index_variable="SLURM_ARRAY_TASK_ID")


def submit_script(
    batch_script: str,
    elements: Sequence[ArrayElement],
    *,
    job_name: str,
    group: str,
    log_dir: str,
    env: Mapping[str, str],
    working_dir: str | None = None,
    throttle: int | None = None,
) -> str:
    """One round trip for a chunk: adopt each element's earlier job, submit the rest as one array.

    Like a single job's submission (:func:`~airflow_hpc_provider.dialects.slurm.submit_script`):
    under a lock, each element's record of jobs is read and its newest unwatched job the
    scheduler knows is adopted (``_adopt``, the same function); the new array's element ids are
    appended to every element's record before any is printed, so a triggerer killed at any point
    leaves them findable and its successor adopts them instead of submitting again (an element is
    recorded with its try: a trigger of that try adopts it even after it was watched, a later try
    never adopts one a trigger watched). Hang-ups are
    ignored: a dropped connection does not stop the script between ``sbatch`` and the records.
    """
    shared, own = split_env(elements)
    log_dir_arg = remote_shell.home_relative(log_dir)
    lock = remote_shell.home_relative(f"{log_dir.rstrip('/')}/arrays.lock")
    output = remote_shell.home_relative(f"{log_dir.rstrip('/')}/array-%A_%a.log")
    spread = f"%{int(throttle)}" if throttle else ""
    sbatch = [
        "sbatch",
        "--parsable",
        f"--job-name={quote(job_name)}",
        f"--comment={quote(f'{JobKey.PREFIX}:{group}:array')}",
        f"--output={output}",
        "--open-mode=append",
        f'--array="$_todo"{spread}',
    ]
    if working_dir:
        sbatch.append(f"--chdir={quote(working_dir)}")
    adopt = "".join(
        f"_pick=$(_adopt {adoption_args(log_dir, element.key, this_try=True)}) || exit 1\n"
        f'if [ -n "$_pick" ]; then printf \'ADOPTED {element.index} %s\\n\' "$_pick"; '
        f'else _todo="$_todo${{_todo:+,}}{element.index}"; fi\n'
        for element in elements
    )
    record = "".join(
        f'  case ",$_todo," in *,{element.index},*) '
        f"printf '%s_{element.index} {int(element.key.try_number)}\\n' \"$_id\" >> "
        f'{remote_shell.home_relative(jobs_record(log_dir, element.key))} || echo "could not record job ${{_id}}_'
        f'{element.index}" >&2;; esac\n'
        for element in elements
    )
    report = "".join(
        f"  case \",$_todo,\" in *,{element.index},*) printf 'SUBMITTED {element.index} %s_{element.index}\\n' "
        '"$_id";; esac\n'
        for element in elements
    )
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
        + "  _id=$("
        + remote_shell.heredoc(batch_script, feed=" ".join(sbatch))
        + ") || exit $?\n"
        "  _id=${_id%%;*}\n" + record + report + "fi\n"
    )


# A submitted element (812_5), or a single job an earlier try submitted with arrays off.
_ELEMENT_ID = re.compile(r"\d+(_\d+)?")


def parse_submit_output(stdout: str, indexes: Sequence[int]) -> dict[int, ElementOutcome]:
    """What :func:`submit_script` printed, per element index; every element must have an answer."""
    answers = read_answers(stdout, indexes, _ELEMENT_ID)
    return {index: ElementOutcome(index, *answer) for index, answer in answers.items()}
