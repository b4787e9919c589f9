"""Links on a Batch task's page: the job in the AWS Batch console and its CloudWatch log stream."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

import airflow_hpc_provider.aws_extra  # noqa: F401  (first: names the extra when it is missing)
from airflow_hpc_provider.dialects.batch import DEFAULT_LOG_GROUP

LINK_XCOM_KEY = "batch_job"


def _console_part(text: str) -> str:
    # The CloudWatch console wants path parts URL-encoded twice, with '%' written as '$'.
    return quote(quote(text, safe=""), safe="").replace("%", "$")


def job_url(region: str, job_id: str) -> str:
    return f"https://{region}.console.aws.amazon.com/batch/home?region={region}#jobs/detail/{job_id}"


def log_url(region: str, group: str, stream: str | None) -> str:
    base = f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#logsV2:log-groups/log-group/"
    url = base + _console_part(group)
    return url + "/log-events/" + _console_part(stream) if stream else url


def _pushed(ti_key: Any) -> dict[str, Any]:
    value = XCom.get_value(ti_key=ti_key, key=LINK_XCOM_KEY)
    return value if isinstance(value, dict) else {}


class BatchJobLink(BaseOperatorLink):
    """The job's page in the AWS Batch console."""

    name = "AWS Batch job"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        info = _pushed(ti_key)
        if not info.get("job_id") or not info.get("region"):
            return ""
        return job_url(str(info["region"]), str(info["job_id"]))


class BatchLogLink(BaseOperatorLink):
    """The job's CloudWatch log stream (the log group until the job has started)."""

    name = "AWS Batch log stream"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        info = _pushed(ti_key)
        if not info.get("region"):
            return ""
        return log_url(str(info["region"]), str(info.get("log_group") or DEFAULT_LOG_GROUP), info.get("log_stream"))
