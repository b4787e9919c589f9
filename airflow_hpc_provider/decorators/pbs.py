"""``@task.pbs``: a Python function as a PBS job; its return value becomes the task's XCom."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.python_task.cluster_task import ClusterPythonJob, python_job_template_fields


class PbsPythonOperator(ClusterPythonJob, DecoratedOperator, PbsOperator):
    """What ``@task.pbs`` makes: every argument of :class:`PbsOperator` but ``command`` and
    ``script``, and those of :class:`~airflow_hpc_provider.python_task.cluster_task.ClusterPythonJob`."""

    custom_operator_name = "@task.pbs"
    template_fields: Sequence[str] = python_job_template_fields(PbsOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {"op_args": "py", "op_kwargs": "py", "env": "json"}


def pbs_task(
    python_callable: Callable[..., Any] | None = None, multiple_outputs: bool | None = None, **kwargs: Any
) -> TaskDecorator:
    """Run the decorated function as a PBS job, e.g. ``@task.pbs(pbs_conn_id="hpc", cpus=4)``."""
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=PbsPythonOperator,
        **kwargs,
    )
