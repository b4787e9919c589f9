"""``@task.pbs``: a Python function as a PBS job; its return value becomes the task's XCom."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator

from airflow_hpc_provider.decorators.factory import PYTHON_CALL_RENDERERS, python_task_decorator
from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.python_task.cluster_task import ClusterPythonJob, python_job_template_fields


class PbsPythonOperator(ClusterPythonJob, DecoratedOperator, PbsOperator):
    """What ``@task.pbs`` makes: every argument of :class:`PbsOperator` but ``command`` and
    ``script``, and those of :class:`~airflow_hpc_provider.python_task.cluster_task.ClusterPythonJob`."""

    custom_operator_name = "@task.pbs"
    template_fields: Sequence[str] = python_job_template_fields(PbsOperator)
    template_fields_renderers: ClassVar[dict[str, str]] = {**PYTHON_CALL_RENDERERS}


pbs_task = python_task_decorator(PbsPythonOperator, '@task.pbs(pbs_conn_id="hpc", cpus=4)')
