"""How a mapped ``BatchRevisionOperator`` task instance becomes one child of an AWS Batch array job.

Mapped task instances that defer together are submitted by the triggerer as one SubmitJob with
``arrayProperties`` per group (:mod:`~airflow_hpc_provider.watching.batch_arrays`); each keeps its
own task instance, log, state, exit code, retry and stop. This module decides whether a task
instance goes that way and builds its trigger. The worker resolves the job definition revision
(the group is per revision) and the job's environment, as for a job of its own, but submits nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from airflow_hpc_provider.config import default_array_window_s, default_poll_interval_s
from airflow_hpc_provider.dialects import batch, batch_array
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.operators.arrays import (
    ElementCandidate,
    check_array_arguments,
    mapped_count,
    why_not_an_array,
)
from airflow_hpc_provider.operators.batch_request import git_checkout
from airflow_hpc_provider.operators.env_layers import LayeredEnvOperator
from airflow_hpc_provider.triggers.batch_array import BatchArrayElementTrigger
from airflow_hpc_provider.watching.arrays import ElementRequest, env_items
from airflow_hpc_provider.watching.batch_arrays import BatchArrayGroup, element_of, request_to_dict
from airflow_hpc_provider.watching.batch_logs import CURSOR_XCOM_KEY, SavedPosition

if TYPE_CHECKING:
    from airflow.sdk import Context


class BatchElementCandidate(ElementCandidate, Protocol):
    """What this module reads of a ``BatchRevisionOperator`` (named so only its module imports this one)."""

    aws_conn_id: str | None
    region_name: str | None
    array_window: float | None
    vcpus: float | None
    memory_mb: int | None
    gpus: int | None
    timeout_s: int | None
    retry_attempts: int | None
    tags: dict[str, str]
    share_identifier: str | None
    scheduling_priority: int | None

    def trigger_deadline(self) -> float | None: ...


def wants_element(operator: ElementCandidate, context: Context) -> bool:
    """Whether this task instance may be an array child; where it is mapped and may not, why (in its log)."""
    why_not = why_not_an_array(operator, context)
    if why_not is not None and context["ti"].map_index not in (None, -1):
        operator.log.info("Submitting a job of its own, not an array element: %s", why_not)
    return why_not is None


def checked_array_arguments(
    task_id: str, array: Any, throttle: Any, window_s: Any
) -> tuple[bool | None, None, float | None]:
    """At parse time: the array arguments are what they say, and no ``array_throttle``: Batch has
    no limit on how many children of one array run at once."""
    check_array_arguments(task_id, array, None, window_s)
    if throttle is not None:
        raise JobSpecError(
            f"{task_id}: array_throttle={throttle!r}: AWS Batch has no per-array limit on running children "
            "(Slurm's %N). Limit them with the job queue's compute environment (maxvCpus) or a fair-share "
            "scheduling policy, or map with max_active_tis_per_dag and array=False"
        )
    return array, None, window_s


def batch_element_trigger(
    operator: BatchElementCandidate,
    context: Context,
    *,
    key: JobKey,
    base: str,
    queue: str,
    definition_arn: str,
    head: str,
    prelude: tuple[str, ...],
    command: str,
    env: dict[str, str],
    poll_interval: float,
) -> BatchArrayElementTrigger | None:
    """The trigger that submits this mapped task instance (:func:`wants_element`) with its siblings
    as one Batch array, then watches its child; None (the reason in the task log) where its command
    and env values fit no array request, so it submits a job of its own."""
    ti = context["ti"]
    group = BatchArrayGroup(
        conn_id=str(operator.aws_conn_id or ""),
        region_name=operator.region_name,
        base=base,
        run_id=str(ti.run_id),
        queue=queue,
        definition_arn=definition_arn,
        head=head,
        prelude=prelude,
        vcpus=operator.vcpus,
        memory_mb=operator.memory_mb,
        gpus=operator.gpus,
        timeout_s=operator.timeout_s,
        retry_attempts=operator.retry_attempts,
        tags=tuple(sorted((str(name), str(value)) for name, value in operator.tags.items())),
        share_identifier=operator.share_identifier,
        scheduling_priority=operator.scheduling_priority,
        window_s=operator.array_window or default_array_window_s(),
    )
    request = ElementRequest(
        group=group,
        key=key,
        command=command,
        map_index=-1 if ti.map_index is None else int(ti.map_index),
        env=env_items(env),
        siblings="\x1f".join((ti.dag_id, ti.run_id, ti.task_id)),
        expected=mapped_count(context),
    )
    if not batch_array.fits_alone(group.shape(), element_of(request)):
        why_not = (
            f"its command and env values do not fit one Batch array request ({batch.OVERRIDES_LIMIT} "
            "characters of container overrides, which every child shares)"
        )
        if operator.array is True:
            raise JobSpecError(f"{operator.task_id}: array=True, but {why_not}")
        operator.log.info("Submitting a job of its own, not an array element: %s", why_not)
        return None
    operator.log.info(
        "Deferring to the triggerer, which submits this task instance with the mapped siblings waiting "
        "with it as one %s array job to queue %s; this instance's command:\n%s",
        batch.NAME,
        queue,
        command,
    )
    return BatchArrayElementTrigger(
        element=request_to_dict(request),
        aws_conn_id=operator.aws_conn_id,
        region_name=operator.region_name,
        poll_interval=poll_interval,
        deadline=operator.trigger_deadline(),
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=ti.run_id,
        map_index=request.map_index,
    )


def why_no_batch_element(*, watch_only: bool, wait_for_completion: bool, array_size: int | None) -> str | None:
    """What of a Batch task's own settings keeps its instances from being array children."""
    reasons = [
        (watch_only, "the task watches an existing job (job_id=)"),
        (not wait_for_completion, "wait_for_completion=False returns the job id at once, from the worker"),
        (array_size is not None, f"the task is an array job of its own (array_size={array_size})"),
    ]
    return next((reason for applies, reason in reasons if applies), None)


class BatchArrayElements(LayeredEnvOperator):
    """What ``BatchRevisionOperator`` does to run its mapped instances as array children (its base)."""

    # Mapped instances may be children of array jobs (``@task.batch`` says no: see its class).
    supports_arrays: ClassVar[bool] = True
    array_arguments_check = staticmethod(checked_array_arguments)
    # Set by BatchRevisionOperator.__init__ (and _layer_environment, before an element defers).
    array: bool | None
    array_window: float | None
    job_id: str | None
    command: str | None
    git: dict[str, str] | None
    wait_for_completion: bool
    array_size: int | None
    poll_interval: float | None
    aws_conn_id: str | None
    region_name: str | None
    vcpus: float | None
    memory_mb: int | None
    gpus: int | None
    timeout_s: int | None
    retry_attempts: int | None
    tags: dict[str, str]
    share_identifier: str | None
    scheduling_priority: int | None
    _job_variables: dict[str, str]
    _env_prelude: tuple[str, ...]

    def why_no_array_element(self) -> str | None:
        return why_no_batch_element(
            watch_only=self.job_id is not None, wait_for_completion=self.wait_for_completion, array_size=self.array_size
        )

    def defer_as_array_element(self, context: Context, key: JobKey, base: str, queue: str, definition: str) -> None:
        """Defer to the triggerer, which submits this instance with its siblings as one array job
        (docs/arrays.rst); returns only where it fits none (then it is a job of its own)."""
        trigger = batch_element_trigger(
            self,
            context,
            key=key,
            base=base,
            queue=queue,
            definition_arn=definition,
            head=batch_array.head_script(git_checkout(self.git)),
            prelude=self._env_prelude,
            command=self.command or "",
            env=dict(self._job_variables),
            poll_interval=self.poll_interval or default_poll_interval_s(),
        )
        if trigger is not None:
            context["ti"].xcom_push(key=CURSOR_XCOM_KEY, value=SavedPosition.before_watching())
            self.defer(trigger=trigger, method_name="execute_complete")
