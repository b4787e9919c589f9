"""``@task.slurm``: a Python function as a Slurm job; its return value becomes the task's XCom."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator

from airflow_hpc_provider.decorators.factory import PYTHON_CALL_RENDERERS, python_task_decorator
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator
from airflow_hpc_provider.python_task.cluster_task import ClusterPythonJob, python_job_template_fields


class SlurmPythonOperator(ClusterPythonJob, DecoratedOperator, SlurmSubmitOperator):
    """What ``@task.slurm`` makes: every argument of :class:`SlurmSubmitOperator` but ``command`` and
    ``script``, and those of :class:`~airflow_hpc_provider.python_task.cluster_task.ClusterPythonJob`."""

    custom_operator_name = "@task.slurm"
    template_fields: Sequence[str] = python_job_template_fields(SlurmSubmitOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {**PYTHON_CALL_RENDERERS}


slurm_task = python_task_decorator(SlurmPythonOperator, '@task.slurm(slurm_conn_id="hpc", cpus=4)')
