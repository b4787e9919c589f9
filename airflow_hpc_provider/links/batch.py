"""Links on a Batch task's page: the job in the AWS Batch console and its CloudWatch log stream.

Both are the amazon provider's console links (:class:`BaseAwsLink`): the console's domain follows
the connection's partition (aws, aws-cn, aws-us-gov), and nothing is stored for them when the
task says ``do_xcom_push=False``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink
from airflow.providers.amazon.aws.links.batch import BatchJobDetailsLink

from airflow_hpc_provider.dialects.batch import DEFAULT_LOG_GROUP


def _console_part(text: str) -> str:
    # The CloudWatch console wants path parts URL-encoded twice, with '%' written as '$'.
    return quote(quote(text, safe=""), safe="").replace("%", "$")


class BatchJobLink(BatchJobDetailsLink):
    """The job's page in the AWS Batch console."""

    name = "AWS Batch job"


class BatchLogLink(BaseAwsLink):
    """The job's CloudWatch log stream (the log group until the job has started)."""

    name = "AWS Batch log stream"
    key = "batch_job_log_stream"
    format_str = BASE_AWS_CONSOLE_LINK + "/cloudwatch/home?region={region_name}#logsV2:log-groups/log-group/{where}"

    def format_link(self, **kwargs: Any) -> str:
        where = _console_part(str(kwargs.get("log_group") or DEFAULT_LOG_GROUP))
        if kwargs.get("log_stream"):
            where += "/log-events/" + _console_part(str(kwargs["log_stream"]))
        link: str = super().format_link(**{**kwargs, "where": where})
        return link
