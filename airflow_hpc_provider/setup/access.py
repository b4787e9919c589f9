"""Who and where the AWS set-up works: credentials, region and endpoints from an Airflow ``aws`` connection
(``--aws-conn-id``) or, without one, boto3's usual chain; the account and partition from STS.

It goes through the provider's AWS hook, so a connection's ``endpoint_url`` (a VPC endpoint, a
LocalStack, the tests' moto) holds for every service the set-up calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow.sdk.exceptions import AirflowNotFoundException
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from airflow_hpc_provider.errors import SetupError
from airflow_hpc_provider.hooks.aws import MultiServiceAwsHook
from airflow_hpc_provider.setup.naming import check_region
from airflow_hpc_provider.setup.prompts import Prompter


class SetupAwsHook(MultiServiceAwsHook):
    """The AWS hook, finding its connection the way Airflow's own CLI commands do.

    Outside a task the SDK's lookup sees only environment variables; the set-up runs as an
    ``airflow`` command, where a connection saved in the UI (the metadata database) or a secrets
    backend must be found too.
    """

    @classmethod
    def get_connection(cls, conn_id: str) -> Any:
        from airflow.models.connection import Connection

        return Connection.get_connection_from_secrets(conn_id)


@dataclass(frozen=True)
class AwsAccess:
    hook: SetupAwsHook
    region: str
    account: str
    partition: str
    # The connection's own endpoint_url, carried into the connection the set-up prints (None for AWS itself).
    endpoint_url: str | None

    def client(self, service: str) -> Any:
        return self.hook.client(service)


def open_access(aws_conn_id: str | None, region: str | None, prompter: Prompter) -> AwsAccess:
    """Resolve the connection, the region and the account, or say clearly which one is missing."""
    if aws_conn_id:
        try:
            SetupAwsHook.get_connection(aws_conn_id)
        except AirflowNotFoundException:
            raise SetupError(
                f"--aws-conn-id {aws_conn_id!r}: no such Airflow connection (looked in environment variables, "
                "secrets backends and the metadata database)"
            ) from None
    hook = SetupAwsHook(aws_conn_id=aws_conn_id, region_name=region, client_type="sts")
    resolved = region or hook.region_name or hook.get_session().region_name
    if not resolved:
        resolved = prompter.ask(
            "AWS region (e.g. eu-west-1)",
            flag="--region",
            why="neither the connection (region_name) nor the environment (AWS_DEFAULT_REGION) names one",
        )
    check_region(resolved)
    if resolved != hook.region_name:
        hook = SetupAwsHook(aws_conn_id=aws_conn_id, region_name=resolved, client_type="sts")
    try:
        identity = hook.client("sts").get_caller_identity()
    except NoCredentialsError:
        raise SetupError(
            "no AWS credentials: give --aws-conn-id of an Airflow 'aws' connection, or set them up for boto3 "
            "(AWS_PROFILE, ~/.aws/credentials, an instance role)"
        ) from None
    except (ClientError, BotoCoreError) as error:
        raise SetupError(f"AWS did not accept the credentials: {error}") from error
    partition = str(identity["Arn"]).split(":")[1]
    return AwsAccess(
        hook=hook,
        region=resolved,
        account=str(identity["Account"]),
        partition=partition,
        endpoint_url=hook.conn_config.endpoint_url,
    )
