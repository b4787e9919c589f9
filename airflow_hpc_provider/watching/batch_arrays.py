"""Mapped ``BatchRevisionOperator`` task instances that defer together become AWS Batch array jobs.

The engine (:mod:`.arrays`) collects the instances of one :class:`BatchArrayGroup` (same
connection and region, DAG run, queue, job definition revision, resources, script around the
command: everything but the command and its env values) and hands each chunk to the
:class:`BatchArraySubmitter`, which in one go (in a worker thread: boto3 blocks)

1. adopts every element that an earlier trigger of the same try already submitted: the arrays of
   the group are found by name (ListJobs) and read (DescribeJobs); each records, in its
   ``parameters``, which task instance and try each index is (:mod:`~..dialects.batch_array`);
2. submits the rest as one SubmitJob with ``arrayProperties.size`` (more than one only where
   the elements' commands and env values do not fit one request: ECS takes 8,192 characters of
   container overrides);

and each instance's trigger then watches its own child ``<array>:<index>`` with the shared Batch
poller: its own status, exit code and CloudWatch stream.

Restarts: the array job itself is the record, made in the same call that submits it, so a
triggerer killed at any moment after SubmitJob left its elements findable, and its successor's
triggers (rebuilt with an empty job id) adopt them. ListJobs is eventually consistent: an array
submitted in the last seconds before a restart may be missed (a new triggerer takes longer than
that to pick the triggers up). Only the same try adopts: Batch refuses to tag a child job
(TagResource), so no child can be marked as watched, and a later try (a retry after a failure, a
cleared task) always submits a new job.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_hpc_provider.dialects import batch, batch_array
from airflow_hpc_provider.dialects.batch import ContainerRequest
from airflow_hpc_provider.dialects.batch_array import ArrayShape
from airflow_hpc_provider.dialects.slurm_array import ArrayElement
from airflow_hpc_provider.hooks.batch import BatchHook
from airflow_hpc_provider.watching.arrays import ElementRequest, ElementSubmitted, element_fields, element_from_fields
from airflow_hpc_provider.watching.batch import BatchTarget

log = logging.getLogger(__name__)

STOP_REASON = "Stopped from Airflow: the task was stopped while its array was being submitted"


@dataclass(frozen=True)
class BatchArrayGroup:
    """What the elements of one Batch array share: all of the request but commands and env values."""

    conn_id: str
    region_name: str | None
    base: str  # the job name's base (``<dag>-<task>`` or ``job_name``)
    # The DAG run: a restart looks for its elements among the arrays of its group (ListJobs by
    # name), which per run are a few, not every array of the task Batch still keeps (days of runs).
    run_id: str
    queue: str
    definition_arn: str
    head: str
    prelude: tuple[str, ...] = ()
    vcpus: float | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    timeout_s: int | None = None
    retry_attempts: int | None = None
    tags: tuple[tuple[str, str], ...] = ()
    share_identifier: str | None = None
    scheduling_priority: int | None = None
    window_s: float = 10.0

    @property
    def digest(self) -> str:
        """Names the group's arrays (never an env value: those are not part of the group)."""
        fields = (
            self.conn_id,
            str(self.region_name),
            self.base,
            self.run_id,
            self.queue,
            self.definition_arn,
            self.head,
            *self.prelude,
            str((self.vcpus, self.memory_mb, self.gpus, self.timeout_s, self.retry_attempts)),
            str(self.tags),
            str((self.share_identifier, self.scheduling_priority)),
        )
        return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()[:20]

    def shape(self) -> ArrayShape:
        return ArrayShape(
            name=batch_array.array_name(self.base, self.digest),
            queue=self.queue,
            definition_arn=self.definition_arn,
            head=self.head,
            group=self.digest,
            prelude=self.prelude,
            resources=ContainerRequest(vcpus=self.vcpus, memory_mb=self.memory_mb, gpus=self.gpus),
            timeout_s=self.timeout_s,
            retry_attempts=self.retry_attempts,
            tags=self.tags,
            share_identifier=self.share_identifier,
            scheduling_priority=self.scheduling_priority,
        )


def element_of(request: ElementRequest, index: int = 0) -> ArrayElement:
    return ArrayElement(index, request.key, request.command, request.map_index, dict(request.env))


class BatchArraySubmitter:
    """AWS Batch's arrays for one connection and region (see the module docstring)."""

    scheduler = batch.NAME

    def __init__(self, target: BatchTarget) -> None:
        self.target = target
        self._hook: BatchHook | None = None
        self._max_size = batch_array.MAX_ARRAY_SIZE
        self.submissions = 0  # SubmitJob calls made (the tests count moto's too)

    @property
    def where(self) -> str:
        return f"{self.target.aws_conn_id} ({self.target.region_name or 'the connection region'})"

    def hook(self) -> BatchHook:
        if self._hook is None:  # one boto3 session per submitter: each new one costs ~1 s of CPU
            self._hook = self.target.hook()
        return self._hook

    async def read_max_array_size(self) -> int:
        self._max_size = await asyncio.to_thread(lambda: self.hook().max_array_size())
        return self._max_size

    async def submit_chunk(
        self, group: Any, requests: Sequence[ElementRequest], number: int, chunks: int
    ) -> list[ElementSubmitted]:
        return await asyncio.to_thread(self._submit_chunk, group, list(requests), number, chunks)

    def _submit_chunk(
        self, group: BatchArrayGroup, requests: list[ElementRequest], number: int, chunks: int
    ) -> list[ElementSubmitted]:
        hook = self.hook()
        shape = group.shape()
        arrays = hook.arrays_named(group.queue, batch_array.array_name_filter(group.base, group.digest))
        answers: dict[int, ElementSubmitted] = {}
        recorded_by_key = batch_array.recorded_by_key(arrays, group.digest)
        adopted = {
            position: recorded
            for position, request in enumerate(requests)
            if (recorded := recorded_by_key.get((request.key.task_digest, request.key.try_number))) is not None
        }
        states = {
            str(job["jobId"]): str(job.get("status"))
            for job in hook.describe_jobs([recorded.job_id for recorded in adopted.values()])
        }
        for position, recorded in adopted.items():
            state = states.get(recorded.job_id)
            answers[position] = ElementSubmitted(
                job_id=recorded.job_id,
                array_id=recorded.array_id,
                adopted=True,
                state=state,
                ended=state in batch.FINAL_STATES,
                index=recorded.index,
                chunk=number,
                chunks=chunks,
                log_path="",
                cursor_path="",
            )
        rest = [position for position in range(len(requests)) if position not in adopted]
        packs = batch_array.pack(shape, [element_of(requests[position]) for position in rest], self._max_size)
        positions = iter(rest)
        for elements in packs:
            array_id = hook.submit(batch_array.array_request(shape, elements))
            self.submissions += 1
            if len(packs) > 1:
                log.info(
                    "Chunk %d/%d of %s went as %d arrays (the elements' commands and env values do not fit "
                    "one request): array %s holds %d",
                    number,
                    chunks,
                    group.base,
                    len(packs),
                    array_id,
                    len(elements),
                )
            for element in elements:
                answers[next(positions)] = ElementSubmitted(
                    job_id=batch_array.element_job_id(array_id, element.index, len(elements)),
                    array_id=array_id,
                    adopted=False,
                    state=None,
                    ended=False,
                    index=element.index,
                    chunk=number,
                    chunks=chunks,
                    log_path="",
                    cursor_path="",
                )
        return [answers[position] for position in range(len(requests))]

    async def cancel(self, elements: Sequence[ElementSubmitted]) -> None:
        def terminate() -> None:
            for element in elements:
                self.hook().terminate(element.job_id, STOP_REASON)

        await asyncio.to_thread(terminate)


# --- as a trigger stores it -------------------------------------------------------------------------


def request_to_dict(request: ElementRequest) -> dict[str, Any]:
    """The request as JSON-plain fields (a trigger's kwargs, which Airflow stores encrypted)."""
    group: BatchArrayGroup = request.group
    return {
        "region_name": group.region_name,
        "base": group.base,
        "run_id": group.run_id,
        "queue": group.queue,
        "definition_arn": group.definition_arn,
        "head": group.head,
        "prelude": list(group.prelude),
        "vcpus": group.vcpus,
        "memory_mb": group.memory_mb,
        "gpus": group.gpus,
        "timeout_s": group.timeout_s,
        "retry_attempts": group.retry_attempts,
        "tags": [list(pair) for pair in group.tags],
        "share_identifier": group.share_identifier,
        "scheduling_priority": group.scheduling_priority,
        "window_s": group.window_s,
        **element_fields(request),
    }


def request_from_dict(conn_id: str, data: Mapping[str, Any]) -> ElementRequest:
    def optional(name: str, kind: type) -> Any:
        value = data.get(name)
        return None if value is None else kind(value)

    group = BatchArrayGroup(
        conn_id=conn_id,
        region_name=optional("region_name", str),
        base=str(data["base"]),
        run_id=str(data["run_id"]),
        queue=str(data["queue"]),
        definition_arn=str(data["definition_arn"]),
        head=str(data["head"]),
        prelude=tuple(str(line) for line in data.get("prelude") or ()),
        vcpus=optional("vcpus", float),
        memory_mb=optional("memory_mb", int),
        gpus=optional("gpus", int),
        timeout_s=optional("timeout_s", int),
        retry_attempts=optional("retry_attempts", int),
        tags=tuple((str(name), str(value)) for name, value in data.get("tags") or ()),
        share_identifier=optional("share_identifier", str),
        scheduling_priority=optional("scheduling_priority", int),
        window_s=float(data["window_s"]),
    )
    return element_from_fields(group, data)
