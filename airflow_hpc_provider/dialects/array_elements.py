"""The elements of a scheduler array of mapped task instances, as pure functions shared by the
schedulers' array dialects (:mod:`~airflow_hpc_provider.dialects.slurm_array`,
:mod:`~airflow_hpc_provider.dialects.sge_array`, :mod:`~airflow_hpc_provider.dialects.pbs_array`):
what an element is, the array's one batch script (each element's command behind a ``case`` on its
index, run through ``eval`` so a command that does not parse fails its own element only), and how
per-element env values travel: a value every element shares under its own name, a value of one
element under a carrier name (``_AHE_<index>_<NAME>``) that only its branch reads into ``NAME``,
before every carrier is unset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.jobs import JobKey


@dataclass(frozen=True)
class ArrayElement:
    """One task instance in an array: its index there, its key, and what it runs."""

    index: int
    key: JobKey
    command: str
    map_index: int
    env: Mapping[str, str] = field(default_factory=dict)


def element_script(head: str, elements: Sequence[ArrayElement], *, index_variable: str) -> str:
    """The array's one batch script: ``head``, then each element's command behind its index.

    ``head`` is the batch script of one element rendered without a command; for a whole script
    by the user (no commands), it is the script itself, which every element runs.
    ``index_variable`` holds the running element's index: Slurm's ``SLURM_ARRAY_TASK_ID``, or one
    Grid Engine's head sets (its task ids are renumbered at each submission, see
    :mod:`~airflow_hpc_provider.dialects.sge_array`).
    """
    if not any(element.command for element in elements):
        return head
    selector = f"${{{index_variable}-}}"
    return head + own_env_lines(elements, selector) + command_lines(elements, selector)


def carrier(index: int, name: str) -> str:
    """The name one element's own value of ``name`` travels under."""
    return f"_AHE_{index}_{name}"


def split_env(elements: Sequence[ArrayElement]) -> tuple[dict[str, str], dict[str, str]]:
    """The values every element has alike (sent once, under their own names), and each element's
    own values (sent under :func:`carrier` names)."""
    shared: dict[str, str] = {}
    for name in sorted({name for element in elements for name in element.env}):
        values = {element.env.get(name) for element in elements}
        value = next(iter(values))
        if len(values) == 1 and value is not None:
            shared[name] = value
    own = {
        carrier(element.index, name): value
        for element in elements
        for name, value in element.env.items()
        if name not in shared
    }
    return shared, own


def own_names(elements: Sequence[ArrayElement]) -> list[tuple[ArrayElement, list[str]]]:
    """Each element with the names of its own (not shared) env values."""
    shared, _ = split_env(elements)
    return [(element, [name for name in element.env if name not in shared]) for element in elements]


def own_env_lines(elements: Sequence[ArrayElement], selector: str) -> str:
    """Shell lines by which the element named by ``selector`` (a parameter expansion: its index) takes its
    own values from their carriers, after which no carrier is left: an element sees its own only."""
    own = own_names(elements)
    carriers = [carrier(element.index, name) for element, names in own for name in names]
    if not carriers:
        return ""
    takes = "".join(
        f"{element.index}) export "
        + " ".join(f'{name}="${{{carrier(element.index, name)}-}}"' for name in names)
        + " ;;\n"
        for element, names in own
        if names
    )
    return f'case "{selector}" in\n{takes}esac\nunset {" ".join(carriers)}\n'


def command_lines(elements: Sequence[ArrayElement], selector: str) -> str:
    """The element named by ``selector`` runs its own command, through ``eval`` so a command that
    does not parse fails its own element only."""
    branches = "".join(f"{element.index}) eval {quote(element.command)} ;;\n" for element in elements)
    return (
        f'case "{selector}" in\n{branches}'
        f'*) echo "airflow-hpc: no element {selector} in this array\'s script" >&2; exit 1 ;;\nesac\n'
    )


def read_answers(
    stdout: str, indexes: Sequence[int], job_id_form: re.Pattern[str]
) -> dict[int, tuple[str, bool, str | None]]:
    """What an array submit script printed (``ADOPTED <index> <id> [<state>]`` or ``SUBMITTED
    <index> <id>`` lines), per element index: its job id, whether it was adopted, and an adopted
    job's state. Every element must have an answer, every id the scheduler's ``job_id_form``."""
    answers: dict[int, tuple[str, bool, str | None]] = {}
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word not in ("ADOPTED", "SUBMITTED"):
            continue
        index, _, rest = rest.partition(" ")
        job_id, _, state = rest.partition(" ")
        if not index.isdigit() or not job_id_form.fullmatch(job_id):
            raise ValueError(f"an unreadable line in the array submission's output: {line!r}")
        answers[int(index)] = (job_id, word == "ADOPTED", state.strip() or None)
    missing = [index for index in indexes if index not in answers]
    if missing:
        raise ValueError(f"no job id for array index(es) {missing} in the submission's output: {stdout!r}")
    return answers
