"""How a mapped task instance becomes one element of a scheduler array.

Mapped task instances that defer together are submitted by the triggerer as one array per group
(:mod:`~airflow_hpc_provider.watching.arrays`); each keeps its own task instance, log, state, exit
code, retry and cancel. This module decides whether a task instance goes that way
(:func:`why_not_an_array`) and builds its trigger; the worker touches no cluster to do so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from airflow_hpc_provider.config import default_array_window_s
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobSpec
from airflow_hpc_provider.triggers.array_element import ClusterArrayElementTrigger
from airflow_hpc_provider.watching.arrays import ElementRequest, env_items
from airflow_hpc_provider.watching.cluster_arrays import ClusterArrayGroup, request_to_dict

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_hpc_provider.operators.ssh_cluster import ClusterSettings


class TaskLog(Protocol):
    def info(self, event: str, *args: Any) -> Any: ...


class ElementCandidate(Protocol):
    """What :func:`why_not_an_array` reads of any operator whose mapped instances may be array
    elements (named so the operator's module alone imports this one)."""

    task_id: str
    array: bool | None
    deferrable: bool

    @property
    def log(self) -> TaskLog: ...

    @property
    def supports_arrays(self) -> bool: ...

    def why_no_array_element(self) -> str | None:
        """What of this operator's own settings keeps its instances from being elements."""
        ...


class ArrayCapable(ElementCandidate, Protocol):
    """What :func:`array_element_trigger` reads of an operator of an SSH cluster's scheduler."""

    array_throttle: int | None
    array_window: float | None
    script: str | None

    def poll_interval_s(self, cluster: ClusterSettings) -> float: ...

    def trigger_deadline(self) -> float | None: ...

    def render(self, spec: JobSpec, cluster: ClusterSettings) -> str: ...

    def job_env(self) -> dict[str, str]: ...


def check_array_arguments(task_id: str, array: bool | None, throttle: int | None, window_s: float | None) -> None:
    """At parse time: the array arguments are what they say."""
    if array not in (None, True, False):
        raise JobSpecError(f"{task_id}: array={array!r} must be True, False or None (arrays for mapped tasks)")
    if throttle is not None and (isinstance(throttle, bool) or not isinstance(throttle, int) or throttle < 1):
        raise JobSpecError(f"{task_id}: array_throttle={throttle!r} must be a whole number of at least 1")
    if window_s is not None and (isinstance(window_s, bool) or not isinstance(window_s, int | float) or window_s <= 0):
        raise JobSpecError(f"{task_id}: array_window={window_s!r} must be seconds, more than zero")


def why_not_an_array(
    operator: ElementCandidate, context: Context, max_concurrent_jobs: int | None = None
) -> str | None:
    """None when this task instance runs as an array element; else why not, in the log's words.

    ``array=None`` (the default) makes every mapped task instance an element where it can be one;
    ``array=False`` never; ``array=True`` fails the task when it cannot be one.
    ``max_concurrent_jobs``: the connection's cap on jobs (SSH clusters), which elements cannot keep.
    """
    if operator.array is False:
        return "array=False"
    ti = context["ti"]
    if ti.map_index is None or ti.map_index < 0:
        return "the task is not mapped"
    if operator.array is None and runs_one_at_a_time():
        return "`airflow dags test` runs the task instances one at a time, so none would wait together"
    reasons = [
        (not operator.deferrable, "the task does not defer (array elements are submitted by the triggerer)"),
        (operator.why_no_array_element() is not None, str(operator.why_no_array_element())),
        (
            max_concurrent_jobs is not None,
            f"the connection caps jobs at max_concurrent_jobs={max_concurrent_jobs} (use array_throttle)",
        ),
        (not operator.supports_arrays, f"{type(operator).__name__} prepares each job on the worker"),
    ]
    for applies, reason in reasons:
        if applies:
            if operator.array is True:
                raise JobSpecError(f"{operator.task_id}: array=True, but {reason}")
            return reason
    return None


def array_element_trigger(
    operator: ArrayCapable,
    context: Context,
    cluster: ClusterSettings,
    spec: JobSpec,
    batch_script: str,
    key: JobKey,
    trigger_type: type[ClusterArrayElementTrigger],
    **trigger_arguments: Any,
) -> ClusterArrayElementTrigger | None:
    """The trigger that submits this mapped task instance with its siblings, then watches its
    element; None (the reason in the task log) where the instance submits a job of its own.
    The worker touches no cluster either way."""
    why_not = why_not_an_array(operator, context, cluster.max_concurrent_jobs)
    if why_not is not None:
        if context["ti"].map_index not in (None, -1):
            operator.log.info("Submitting a job of its own, not an array element: %s", why_not)
        return None
    ti = context["ti"]
    # The elements share the script rendered without a command; each element's command and env
    # come behind its array index. A whole script by the user is the same for every element.
    # Rendered without the env names too: they differ between elements, and each element's are
    # set by its own branch (the env note is a comment only).
    head = (
        batch_script
        if operator.script is not None
        else operator.render(replace(spec, command="", env_names=()), cluster)
    )
    group = ClusterArrayGroup(
        conn_id=cluster.conn_id,
        head=head,
        job_name=spec.job_name,
        log_dir=cluster.log_dir,
        shared_env=env_items(operator.job_env()) if operator.script is not None else (),
        working_dir=spec.working_dir,
        throttle=operator.array_throttle,
        window_s=operator.array_window or default_array_window_s(),
    )
    request = ElementRequest(
        group=group,
        key=key,
        command="" if operator.script is not None else spec.command,
        map_index=-1 if ti.map_index is None else int(ti.map_index),
        env=env_items(operator.job_env()) if operator.script is None else (),
        siblings="\x1f".join((ti.dag_id, ti.run_id, ti.task_id)),
        expected=mapped_count(context),
    )
    trigger = trigger_type(
        conn_id=cluster.conn_id,
        element=request_to_dict(request),
        poll_interval=operator.poll_interval_s(cluster),
        deadline=operator.trigger_deadline(),
        **trigger_arguments,
    )
    operator.log.info(
        "Deferring to the triggerer, which submits this task instance with the mapped siblings waiting "
        "with it as one %s array on %s; this instance's command:\n%s",
        trigger_type.scheduler,
        cluster.conn_id,
        spec.command if operator.script is None else "(the script, the same for every element)",
    )
    return trigger


def runs_one_at_a_time() -> bool:
    """Whether this task runs under ``airflow dags test`` (``dag.test()``): its in-process
    supervisor runs each deferred task's trigger alone, to the end, before the next task starts."""
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # another Airflow layout: assume a real deployment
        return False
    return type(getattr(task_runner, "SUPERVISOR_COMMS", None)).__name__ == "InProcessSupervisorComms"


def mapped_count(context: Context) -> int:
    """How many instances of the mapped task can wait in the triggerer together (-1 when Airflow
    cannot say): its instance count in this run, capped by the task's ``max_active_tis_per_dag``
    and ``max_active_tis_per_dagrun``, which count deferred instances and so keep the rest from
    starting (a DAG's ``max_active_tasks`` counts only running and queued ones, so deferred
    siblings do not hold the others back). The collection window closes early once that many are
    waiting; counting instances a limit holds back would make each wave wait the whole window."""
    ti: Any = context["ti"]
    try:
        count = int(ti.get_ti_count(dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id]))
    except Exception:  # an old API server, a test harness without one: the window alone decides
        return -1
    limits = (getattr(ti.task, "max_active_tis_per_dag", None), getattr(ti.task, "max_active_tis_per_dagrun", None))
    return min([count, *(limit for limit in limits if isinstance(limit, int) and limit > 0)])
