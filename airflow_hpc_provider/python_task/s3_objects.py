"""A Python task's objects in S3 (AWS Batch): the stored payload, the result document, its large values.

Keys, under the task's ``prefix`` (no leading or trailing slash)::

    <prefix>/<digest>/try<N>.payload                   a payload past the inline limit
    <prefix>/<digest>/{AWS_BATCH_JOB_ID}.result        the result document (the job fills in its id)
    <prefix>/<digest>/<job id>.result.v<i>             values past the result inline limit

Uploads go through :meth:`BatchHook.store_bytes`, which states the bucket's default encryption;
the result target carries the same encryption so the container's upload states it too.

How the container reaches S3: with boto3 when the image has it (the job role's credentials, valid
however long the job waits in the queue). For an image without boto3, the stored payload also
carries a presigned GET URL (read-only, that object only: anyone who can read the job's
environment could read an inline payload there anyway), and on request (``presign_result=True``)
the result document a presigned PUT URL. Both expire: a URL signed with a role's temporary
credentials dies with them (often within hours), whatever ``expires_s`` says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import airflow_hpc_provider.aws_extra  # noqa: F401  (first: names the extra when it is missing)
from airflow_hpc_provider.hooks.batch import BatchHook, error_code
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.python_task import results
from airflow_hpc_provider.python_task.codec import EncodedBody
from airflow_hpc_provider.python_task.manifest import S3Body, S3ResultTarget, check_template, fill_template
from airflow_hpc_provider.python_task.results import Referencer, RemoteResult, ResultDocument

JOB_ID_VARIABLE = "AWS_BATCH_JOB_ID"
RESULT_CONTENT_TYPE = "application/json"
# SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_S = 7 * 24 * 3600


def payload_key(prefix: str, key: JobKey) -> str:
    return f"{prefix.strip('/')}/{key.task_digest}/try{key.try_number}.payload"


def result_key_template(prefix: str, key: JobKey) -> str:
    return check_template(
        f"{prefix.strip('/')}/{key.task_digest}/{{{JOB_ID_VARIABLE}}}.result", frozenset({JOB_ID_VARIABLE})
    )


def result_key(prefix: str, key: JobKey, job_id: str) -> str:
    return fill_template(result_key_template(prefix, key), {JOB_ID_VARIABLE: job_id})


def store_payload(hook: BatchHook, bucket: str, key: str, body: EncodedBody, *, presign_s: int | None) -> S3Body:
    """Upload the encoded payload; with ``presign_s``, also a GET URL valid that long."""
    hook.store_bytes(bucket, key, body.data, "application/octet-stream")
    url = None
    if presign_s is not None:
        url = hook.client("s3").generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=min(presign_s, MAX_PRESIGN_S)
        )
    return S3Body(bucket=bucket, key=key, body=body, url=url)


def result_target(
    hook: BatchHook, bucket: str, key_template: str, *, presign_result_s: int | None = None
) -> S3ResultTarget:
    """Where the container writes its result, with the bucket's encryption stated.

    A presigned PUT is signed for one key, known before the job id is: with ``presign_result_s`` the
    key must be fixed (e.g. per try, ``<prefix>/<digest>/try<N>.result``), not a template.
    """
    encryption = hook.bucket_encryption(bucket)
    if presign_result_s is None:
        return S3ResultTarget(bucket=bucket, key_template=key_template, encryption=encryption)
    if "{" in key_template:
        raise ValueError(f"a presigned result URL is signed for one key, and {key_template!r} is a template")
    # The content type is signed too: without it, urllib would send its form default and the
    # signature (and moto's reading of the body) would not match.
    params: dict[str, Any] = {"Bucket": bucket, "Key": key_template, "ContentType": RESULT_CONTENT_TYPE, **encryption}
    url = hook.client("s3").generate_presigned_url(
        "put_object", Params=params, ExpiresIn=min(presign_result_s, MAX_PRESIGN_S)
    )
    return S3ResultTarget(
        bucket=bucket,
        key_template=key_template,
        encryption=encryption,
        put_url=url,
        put_headers={"Content-Type": RESULT_CONTENT_TYPE, **_encryption_headers(encryption)},
    )


def _encryption_headers(encryption: Mapping[str, Any]) -> dict[str, str]:
    """The headers a presigned PUT must send: the signature covers them."""
    names = {
        "ServerSideEncryption": "x-amz-server-side-encryption",
        "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
        "BucketKeyEnabled": "x-amz-server-side-encryption-bucket-key-enabled",
    }
    return {
        names[name]: str(value).lower() if isinstance(value, bool) else str(value) for name, value in encryption.items()
    }


def read_result(hook: BatchHook, bucket: str, key: str) -> bytes | None:
    """The result document, or ``None`` when the job wrote none."""
    s3 = hook.client("s3")
    try:
        data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.ClientError as error:
        if error_code(error) in ("NoSuchKey", "404"):
            return None
        raise
    return data


def referencer(document: ResultDocument, aws_conn_id: str | None) -> Referencer:
    """How XCom names the values a Batch job stored in S3."""
    return results.referencer(document, "s3", aws_conn_id, lambda stored: f"s3://{stored['bucket']}/{stored['key']}")


def load_stored(hook: BatchHook, ref: RemoteResult) -> bytes:
    """The stored bytes of a reference (decode them with :meth:`RemoteResult.decode`)."""
    bucket, _, key = ref.location.removeprefix("s3://").partition("/")
    data: bytes = hook.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def delete(hook: BatchHook, bucket: str, keys: Sequence[str]) -> None:
    """Delete objects (missing ones are no error); up to 1,000 per call."""
    s3 = hook.client("s3")
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        if chunk:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True})
