"""Mapped task instances as one AWS Batch array job, as pure functions: the one SubmitJob request
(``arrayProperties.size``), how many elements fit in one, and reading which task instance each
child of an array is (to adopt it after a restart).

Each element is one Airflow task instance (one ``map_index``) with a key of its own. Batch starts
every child of an array with the same container command and environment: only
``AWS_BATCH_JOB_ARRAY_INDEX`` differs. So everything per element travels in the one request:

* the command: when every element runs the same command (the usual ``expand(env=...)``), once, as a
  single job's; else each behind a ``case`` on the index, run through ``eval`` so a command that
  does not parse fails its own element only;
* env values: a value every element has alike goes once under its own name; a value of one
  element under a carrier name (``_AHE_<index>_<NAME>``, :func:`~.slurm_array.carrier`) in
  ``containerOverrides.environment``, the API field a single job's ``env`` travels in, never in
  the command. The script names the variables, never a value: one loop moves the child's own
  carriers into their names (bash indirection), then unsets every carrier, so a child sees its own
  values only;
* which task instance each index is: the request's ``parameters`` (``airflowHpcElements``:
  ``<task digest>:<try>`` per index, no values). A parameter the command does not reference never
  reaches the container, and DescribeJobs returns it: that is the record a restarted triggerer
  reads to adopt an element instead of submitting it again. (Batch cannot tag a child job:
  TagResource refuses child ARNs, so the record lives on the array.)

Limits that cut an array short of Batch's 10,000 children: the container overrides (command and
environment) of a child may hold at most 8,192 characters (ECS fails the child otherwise, with
"Container Overrides length must be at most 8192"), and a SubmitJob request at most 30 KiB.
:func:`pack` splits elements into arrays that fit both; an element that fits in none alone is
no array element (the operator submits it as a job of its own, which may offload its script to S3).

A group of one is submitted without ``arrayProperties`` (Batch's arrays have 2 children at
least): its job id has no ``:<index>`` and the script reads a missing index as 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_hpc_provider.dialects.batch import (
    OVERRIDES_BUDGET,
    OVERRIDES_LIMIT,
    ContainerRequest,
    container_overrides,
    overrides_length,
    render_script,
)
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.dialects.slurm_array import ArrayElement, carrier, split_env
from airflow_hpc_provider.jobs import JobKey

INDEX_VARIABLE = "AWS_BATCH_JOB_ARRAY_INDEX"
# Batch's own bound on arrayProperties.size (and its floor: an array has 2 children at least).
MAX_ARRAY_SIZE = 10_000
MIN_ARRAY_SIZE = 2
# SubmitJob refuses a job over 30 KiB; the request as JSON is kept 2 KiB below.
REQUEST_LIMIT = 30 * 1024
REQUEST_BUDGET = 28 * 1024
ELEMENTS_PARAMETER = "airflowHpcElements"
ARRAY_TAG = "airflow-hpc-array"
# The carriers of elements' own values (:func:`~.slurm_array.carrier`: ``_AHE_<index>_<NAME>``).
CARRIER_PREFIX = carrier(0, "").removesuffix("0_")


@dataclass(frozen=True)
class ArrayShape:
    """What every element of one array shares: the request around the elements' commands and env."""

    name: str
    queue: str
    definition_arn: str
    head: str  # the script before the elements' env: header, git checkout (:func:`head_script`)
    group: str  # the group's digest: tagged on the array, part of its name
    prelude: tuple[str, ...] = ()  # the env rules' lines, run once the child has its own values
    resources: ContainerRequest = field(default_factory=ContainerRequest)
    timeout_s: int | None = None
    retry_attempts: int | None = None
    tags: tuple[tuple[str, str], ...] = ()
    share_identifier: str | None = None
    scheduling_priority: int | None = None


def array_name(base: str, group: str) -> str:
    """The name of every array of a group (its children share it): ``<base>-array-<digest>``."""
    return f"{base}-array-{group[:16]}"


def array_name_filter(base: str, group: str) -> str:
    """The ListJobs JOB_NAME filter that finds every array of a group."""
    return f"{array_name(base, group)}*"


def element_job_id(array_id: str, index: int, size: int) -> str:
    """A child's job id, ``<array>:<index>``; a group of one was submitted as a job of its own."""
    return f"{array_id}:{index}" if size >= MIN_ARRAY_SIZE else array_id


def head_script(git: Any = None) -> str:
    """The shared start of every element's script: :func:`~.batch.render_script` without a command."""
    return render_script("", (), git).rstrip("\n") + "\n"


def array_script(head: str, elements: Sequence[ArrayElement], prelude: Sequence[str] = ()) -> str:
    """What every child runs under ``bash -c``: ``head``, its own env values, the env rules'
    ``prelude`` (which may read them), then its command."""
    shared, _ = split_env(elements)
    own_names = sorted({name for element in elements for name in element.env if name not in shared})
    index = f'"${{{INDEX_VARIABLE}:-0}}"'
    parts = [head]
    if own_names:
        # Each child copies its own carriers into their names (unset stays unset), then no child
        # keeps any carrier: it sees its own values only.
        parts.append(
            f"for _ahe_name in {' '.join(own_names)}; do\n"
            f'  _ahe_carrier="{CARRIER_PREFIX}${{{INDEX_VARIABLE}:-0}}_$_ahe_name"\n'
            '  if [ -n "${!_ahe_carrier+x}" ]; then export "$_ahe_name=${!_ahe_carrier}"; fi\n'
            "done\n"
            f'for _ahe_carrier in $(compgen -v {CARRIER_PREFIX}); do unset "$_ahe_carrier"; done\n'
            "unset _ahe_name _ahe_carrier\n"
        )
    parts += [f"{line}\n" for line in prelude]
    commands = {element.command for element in elements}
    if len(commands) == 1:
        parts.append(f"{next(iter(commands))}\n")
    else:
        branches = "".join(f"{element.index}) eval {quote(element.command)} ;;\n" for element in elements)
        parts.append(
            f"case {index} in\n{branches}"
            f'*) echo "airflow-hpc: no element ${{{INDEX_VARIABLE}-}} in this array\'s script" >&2; exit 1 ;;\n'
            "esac\n"
        )
    return "".join(parts)


def array_request(shape: ArrayShape, elements: Sequence[ArrayElement]) -> dict[str, Any]:
    """The one SubmitJob request for ``elements`` (indexed 0..n-1, in order)."""
    if [element.index for element in elements] != list(range(len(elements))):
        raise ValueError("an array's elements are indexed 0..n-1 in order")
    shared, own = split_env(elements)
    request: dict[str, Any] = {
        "jobName": shape.name,
        "jobQueue": shape.queue,
        "jobDefinition": shape.definition_arn,
        "containerOverrides": container_overrides(
            ("bash", "-c", array_script(shape.head, elements, shape.prelude)), {**shared, **own}, shape.resources
        ),
        "parameters": {ELEMENTS_PARAMETER: " ".join(_recorded(element.key) for element in elements)},
        "tags": {**dict(shape.tags), ARRAY_TAG: shape.group},
    }
    if len(elements) >= MIN_ARRAY_SIZE:
        request["arrayProperties"] = {"size": len(elements)}
    if shape.timeout_s is not None:
        request["timeout"] = {"attemptDurationSeconds": shape.timeout_s}
    if shape.retry_attempts is not None:
        request["retryStrategy"] = {"attempts": shape.retry_attempts}
    if shape.share_identifier:
        request["shareIdentifier"] = shape.share_identifier
    if shape.scheduling_priority is not None:
        request["schedulingPriorityOverride"] = shape.scheduling_priority
    return request


def overrides_size(request: Mapping[str, Any]) -> int:
    """The container overrides' length as ECS counts it (their JSON)."""
    return overrides_length(request["containerOverrides"])


def request_size(request: Mapping[str, Any]) -> int:
    return len(_json(request).encode())


def fits(request: Mapping[str, Any]) -> bool:
    return overrides_size(request) <= OVERRIDES_BUDGET and request_size(request) <= REQUEST_BUDGET


def fits_alone(shape: ArrayShape, element: ArrayElement) -> bool:
    """Whether the element fits in an array at all (else it is submitted as a job of its own)."""
    return fits(array_request(shape, [replace(element, index=0)]))


def pack(shape: ArrayShape, elements: Sequence[ArrayElement], max_size: int) -> list[list[ArrayElement]]:
    """``elements`` in order, cut into arrays of at most ``max_size`` whose requests fit; each
    array's elements re-indexed from 0. Raises ValueError for an element that fits nowhere.

    A request only grows as elements join it (a value shared so far may become each one's own, a
    command shared so far may need a branch per element), so the longest prefix that fits is
    found by doubling, then halving: O(log n) requests built per array, not one per element.
    """
    arrays: list[list[ArrayElement]] = []
    rest = list(elements)
    while rest:
        take = _longest_fitting(shape, rest, max(1, max_size))
        arrays.append(_indexed(rest[:take]))
        rest = rest[take:]
    return arrays


def _longest_fitting(shape: ArrayShape, elements: Sequence[ArrayElement], max_size: int) -> int:
    def fit(count: int) -> bool:
        return fits(array_request(shape, _indexed(elements[:count])))

    if not fit(1):
        raise ValueError(
            f"the element of map_index {elements[0].map_index} does not fit in an AWS Batch request "
            f"({OVERRIDES_LIMIT} characters of container overrides, {REQUEST_LIMIT} bytes per SubmitJob)"
        )
    limit = min(max_size, len(elements))
    good, bad = 1, limit + 1
    while good * 2 < bad:  # double while it fits
        if fit(min(good * 2, limit)):
            good = min(good * 2, limit)
            if good == limit:
                return limit
        else:
            bad = min(good * 2, limit)
    while bad - good > 1:  # then halve the gap
        middle = (good + bad) // 2
        if fit(middle):
            good = middle
        else:
            bad = middle
    return good


def _indexed(elements: Sequence[ArrayElement]) -> list[ArrayElement]:
    return [replace(element, index=index) for index, element in enumerate(elements)]


# --- reading arrays back: which child is which task instance ---------------------------------------


@dataclass(frozen=True)
class RecordedElement:
    """One child of an array found by DescribeJobs, and the task instance (key) it runs for."""

    job_id: str
    array_id: str
    index: int
    size: int
    created_at: int


def recorded_elements(description: Mapping[str, Any]) -> dict[tuple[str, int], RecordedElement]:
    """The children an array's DescribeJobs entry records, by (task digest, try)."""
    words = str((description.get("parameters") or {}).get(ELEMENTS_PARAMETER, "")).split()
    size = int((description.get("arrayProperties") or {}).get("size") or 0)
    array_id = str(description["jobId"])
    found: dict[tuple[str, int], RecordedElement] = {}
    for index, word in enumerate(words):
        digest, _, try_number = word.partition(":")
        if not digest or not try_number.isdigit():
            continue  # not one of ours: never guessed at
        found[(digest, int(try_number))] = RecordedElement(
            job_id=element_job_id(array_id, index, size),
            array_id=array_id,
            index=index,
            size=size,
            created_at=int(description.get("createdAt") or 0),
        )
    return found


def is_array_of(description: Mapping[str, Any], group: str) -> bool:
    """Whether the DescribeJobs entry is an array (or a lone element) this provider submitted for ``group``."""
    return ":" not in str(description.get("jobId", "")) and (description.get("tags") or {}).get(ARRAY_TAG) == group


def recorded_by_key(descriptions: Sequence[Mapping[str, Any]], group: str) -> dict[tuple[str, int], RecordedElement]:
    """Every child the group's arrays record, by (task digest, try); the newest array's where two
    record the same try. Read once per submission, then looked up per element."""
    found: dict[tuple[str, int], RecordedElement] = {}
    for description in descriptions:
        if not is_array_of(description, group):
            continue
        for identity, recorded in recorded_elements(description).items():
            if identity not in found or recorded.created_at > found[identity].created_at:
                found[identity] = recorded
    return found


def find_recorded(descriptions: Sequence[Mapping[str, Any]], group: str, key: JobKey) -> RecordedElement | None:
    """The child recorded for exactly this try of the task instance, the newest if several.

    Only the same try adopts: Batch cannot tag a child as watched (TagResource refuses child ARNs),
    so an element of an earlier try, whose outcome that try took, is never taken for a later one.
    """
    return recorded_by_key(descriptions, group).get((key.task_digest, key.try_number))


def _recorded(key: JobKey) -> str:
    return f"{key.task_digest}:{int(key.try_number)}"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
