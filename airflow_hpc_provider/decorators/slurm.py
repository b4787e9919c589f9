"""``@task.slurm``: a Python function as a Slurm job; its return value becomes the task's XCom."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator
from airflow_hpc_provider.python_task.cluster_task import ClusterPythonJob, python_job_template_fields


class SlurmPythonOperator(ClusterPythonJob, DecoratedOperator, SlurmSubmitOperator):
    """What ``@task.slurm`` makes: every argument of :class:`SlurmSubmitOperator` but ``command`` and
    ``script``, and those of :class:`~airflow_hpc_provider.python_task.cluster_task.ClusterPythonJob`."""

    custom_operator_name = "@task.slurm"
    template_fields: Sequence[str] = python_job_template_fields(SlurmSubmitOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {"op_args": "py", "op_kwargs": "py", "env": "json"}


def slurm_task(
    python_callable: Callable[..., Any] | None = None, multiple_outputs: bool | None = None, **kwargs: Any
) -> TaskDecorator:
    """Run the decorated function as a Slurm job, e.g. ``@task.slurm(slurm_conn_id="hpc", cpus=4)``."""
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=SlurmPythonOperator,
        **kwargs,
    )
