"""DAGs the Batch tests run with ``airflow dags test`` against moto (names from the environment).

``BATCH_TEMPLATE`` is a job definition the test registered; the connection ``aws_batch`` names the
queue (a held one for ``batch_streaming``, whose job the test feeds with lines, then finishes).
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_hpc_provider.operators.batch import BatchRevisionOperator

TEMPLATE = os.environ.get("BATCH_TEMPLATE", "template-from-the-test")
# Jinja drops a template's final newline unless told not to; the job must get it all the same.
ENV_WITH_NEWLINE = {"ENDS_WITH_NEWLINE": "value\n", "TEMPLATED": "{{ 'rendered' }}\n"}


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["test"])


with _dag("batch_template_users"):
    # One template, two kinds of users: locked tasks name it, a revisions task runs another image
    # on it. The locked task after the revisions task must still run the template's own image.
    locked_before = BatchRevisionOperator(
        task_id="locked_before", aws_conn_id="aws_batch", job_definition=TEMPLATE, command="echo locked"
    )
    revised = BatchRevisionOperator(
        task_id="revised",
        aws_conn_id="aws_batch",
        job_definition=TEMPLATE,
        job_definition_mode="revisions",
        image="repo/app:revised",
        command="echo revised",
    )
    locked_after = BatchRevisionOperator(
        task_id="locked_after", aws_conn_id="aws_batch", job_definition=TEMPLATE, command="echo locked"
    )
    locked_before >> revised >> locked_after

with _dag("batch_streaming"):
    BatchRevisionOperator(
        task_id="job",
        aws_conn_id="aws_batch",
        image="repo/stream:1",
        command="echo streaming",
        env=ENV_WITH_NEWLINE,
        poll_interval=1,
    )
