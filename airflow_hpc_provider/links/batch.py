"""Links on a Batch task's page: the job in the AWS Batch console and its CloudWatch log stream.

Both are the amazon provider's console links (:class:`BaseAwsLink`): the console's domain follows
the connection's partition (aws, aws-cn, aws-us-gov), and nothing is stored for them when the
task says ``do_xcom_push=False``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink
from airflow.providers.amazon.aws.links.batch import BatchJobDetailsLink

from airflow_hpc_provider.dialects.batch import DEFAULT_LOG_GROUP, log_streams_of

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context

    from airflow_hpc_provider.hooks.batch import BatchHook


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


def persist_links(context: Context, operator: BaseOperator, hook: BatchHook, job_id: str, *, job: bool) -> str | None:
    """Give the log link the job's stream once it has one (and the job link its id, when ``job``:
    an array child's id is known only after the triggerer submitted it). Returns what went wrong,
    if anything: a link must never fail the task."""
    try:
        region = str(hook.client().meta.region_name)
        if job:
            BatchJobLink.persist(context, operator, region, hook.conn_partition, job_id=job_id)
        described = hook.describe_jobs([job_id])
        streams = log_streams_of(described[0]) if described else []
        if streams:
            stream = {"log_group": streams[-1].group, "log_stream": streams[-1].name}
            BatchLogLink.persist(context, operator, region, hook.conn_partition, **stream)
    except Exception as error:
        return str(error)
    return None
