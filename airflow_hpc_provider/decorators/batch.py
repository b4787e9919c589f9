"""``@task.batch``: a Python function as an AWS Batch job; its return value becomes the task's XCom.

Needs the ``aws`` extra: importing this without it names the extra to install.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator

import airflow_hpc_provider.aws_extra  # noqa: F401  (first: names the extra when it is missing)
from airflow_hpc_provider.decorators.factory import PYTHON_CALL_RENDERERS, python_task_decorator
from airflow_hpc_provider.operators.batch import BatchRevisionOperator
from airflow_hpc_provider.python_task.batch_task import BatchPythonJob
from airflow_hpc_provider.python_task.cluster_task import python_job_template_fields


class BatchPythonOperator(BatchPythonJob, DecoratedOperator, BatchRevisionOperator):
    """What ``@task.batch`` makes: every argument of :class:`BatchRevisionOperator` but ``command``,
    ``job_id``, ``git``, ``array_size`` and ``wait_for_completion=False``, and those of
    :class:`~airflow_hpc_provider.python_task.batch_task.BatchPythonJob`."""

    custom_operator_name = "@task.batch"
    template_fields: Sequence[str] = tuple(
        name for name in python_job_template_fields(BatchRevisionOperator) if name != "job_id"
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {**PYTHON_CALL_RENDERERS, "tags": "json"}


batch_task = python_task_decorator(
    BatchPythonOperator, '@task.batch(aws_conn_id="aws", image="...", payload_bucket="my-bucket")'
)
