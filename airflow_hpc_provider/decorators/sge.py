"""``@task.sge``: a Python function as a Grid Engine job; its return value becomes the task's XCom."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator

from airflow_hpc_provider.decorators.factory import PYTHON_CALL_RENDERERS, python_task_decorator
from airflow_hpc_provider.operators.sge import SgeOperator
from airflow_hpc_provider.python_task.cluster_task import ClusterPythonJob, python_job_template_fields


class SgePythonOperator(ClusterPythonJob, DecoratedOperator, SgeOperator):
    """What ``@task.sge`` makes: every argument of :class:`SgeOperator` but ``command`` and
    ``script``, and those of :class:`~airflow_hpc_provider.python_task.cluster_task.ClusterPythonJob`."""

    custom_operator_name = "@task.sge"
    template_fields: Sequence[str] = python_job_template_fields(SgeOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {**PYTHON_CALL_RENDERERS}


sge_task = python_task_decorator(SgePythonOperator, '@task.sge(sge_conn_id="hpc", cpus=4)')
