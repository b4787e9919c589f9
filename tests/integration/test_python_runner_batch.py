"""Python functions as AWS Batch jobs, below the decorators: payload and result through S3 (moto server),
the container's command run as a local process with the job's environment and S3 at moto.

Two containers: one whose Python has boto3 (this venv's), and one without it (the test cluster's
/usr/bin/python3 with only cloudpickle, reached as hpcuser over real sshd), which must get by on
presigned URLs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from moto.moto_api import recorder

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.hooks.batch import BatchHook
from airflow_hpc_provider.hooks.slurm import SlurmHook
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.python_task import s3_objects
from airflow_hpc_provider.python_task.cleanup import CleanupPolicy, locations_to_delete
from airflow_hpc_provider.python_task.codec import BATCH_INLINE_LIMIT_BYTES, encode_body
from airflow_hpc_provider.python_task.launch import batch_command, batch_environment
from airflow_hpc_provider.python_task.manifest import PayloadManifest
from airflow_hpc_provider.python_task.results import RemoteResult, ResultDocument, return_value
from airflow_hpc_provider.python_task.serializer import load_serializer, serialize_call
from tests.integration import cluster
from tests.integration.batch.moto_batch import REGION, MotoAws, start_server

CONN_ID = "aws_moto_python"
PREFIX = "airflow-hpc/python"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoAws]:
    server, url = start_server()
    try:
        yield MotoAws(url=url, held=None)  # type: ignore[arg-type]  # no Batch jobs are held here
    finally:
        server.stop()


@pytest.fixture
def hook(moto: MotoAws, monkeypatch: pytest.MonkeyPatch) -> BatchHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto.connection_uri())
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return BatchHook(aws_conn_id=CONN_ID)


@pytest.fixture
def encrypted_bucket(moto: MotoAws) -> str:
    """A bucket whose default encryption (SSE-S3) every upload must state."""
    name = f"payloads-{uuid.uuid4().hex[:12]}"
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=name)
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    return name


def container_env(moto: MotoAws, manifest: PayloadManifest, job_id: str) -> dict[str, str]:
    """What Batch gives the container: the API's environment, its job id, credentials (the job role's)."""
    return {
        **batch_environment(manifest),
        "AWS_BATCH_JOB_ID": job_id,
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }


def summarize(data: bytes, label: str) -> dict[str, Any]:
    import hashlib

    print(f"summarizing {label}: {len(data)} bytes")
    return {"label": label, "sha256": hashlib.sha256(data).hexdigest(), "echo": data}


@contextlib.contextmanager
def uploads_stating_encryption(directory: Path) -> Iterator[dict[str, str | None]]:
    """Object key -> the x-amz-server-side-encryption header its PUT carried, as moto's recorder saw it.

    moto applies a bucket's default encryption to any upload, so only the request itself tells
    whether the uploader stated it (which buckets with a deny-unencrypted policy demand).
    """
    recorder._location = str(directory / "moto-recording.jsonl")
    recorder.reset_recording()
    recorder.start_recording()
    stated: dict[str, str | None] = {}
    try:
        yield stated
    finally:
        recorder.stop_recording()
        for line in recorder.download_recording().splitlines():
            entry = json.loads(line)
            if entry["method"] == "PUT":
                headers = {name.lower(): value for name, value in entry["headers"].items()}
                key = urlsplit(entry["url"]).path.split("/", 2)[-1]
                stated[key] = headers.get("x-amz-server-side-encryption")


def test_a_large_payload_and_a_large_result_go_through_s3_with_the_buckets_encryption(
    moto: MotoAws, hook: BatchHook, encrypted_bucket: str, tmp_path: Path
) -> None:
    key = JobKey.for_task_instance("python_runner_batch", "boto3", uuid.uuid4().hex, -1, 1)
    data = os.urandom(200_000)
    call = serialize_call(summarize, (data,), {"label": "big"})
    body = encode_body(call.data)
    assert not body.fits_inline(BATCH_INLINE_LIMIT_BYTES)
    payload_key = s3_objects.payload_key(PREFIX, key)
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    with uploads_stating_encryption(tmp_path) as stated:
        stored = s3_objects.store_payload(hook, encrypted_bucket, payload_key, body, presign_s=None)
        target = s3_objects.result_target(hook, encrypted_bucket, s3_objects.result_key_template(PREFIX, key))
        manifest = PayloadManifest.for_call(
            call, stored, target, multiple_outputs=True, result_inline_limit_bytes=64 * 1024
        )
        assert len(json.dumps(batch_environment(manifest))) + len(json.dumps(batch_command("python3"))) < 8 * 1024
        container = subprocess.run(
            batch_command(sys.executable),  # this venv's Python: boto3 is there
            env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **container_env(moto, manifest, job_id)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert container.returncode == 0, container.stderr
    assert container.stdout == "summarizing big: 200000 bytes\n"

    result_key = s3_objects.result_key(PREFIX, key, job_id)
    text = s3_objects.read_result(hook, encrypted_bucket, result_key)
    assert text is not None
    document = ResultDocument.parse(text, result_key)
    outputs = return_value(
        document,
        serializer=load_serializer(),
        multiple_outputs=True,
        reference=s3_objects.referencer(document, CONN_ID),
    )
    assert outputs["label"] == "big" and outputs["sha256"] == hashlib.sha256(data).hexdigest()
    reference = RemoteResult.from_xcom(outputs["echo"])
    assert reference is not None and reference.backend == "s3" and reference.conn_id == CONN_ID
    assert reference.location == f"s3://{encrypted_bucket}/{result_key}.v0"
    assert reference.decode(s3_objects.load_stored(hook, reference), load_serializer()) == data
    assert stated == {payload_key: "AES256", result_key: "AES256", f"{result_key}.v0": "AES256"}

    s3_objects.delete(hook, encrypted_bucket, locations_to_delete(CleanupPolicy.DELETE, payload_key, result_key))
    assert s3_objects.read_result(hook, encrypted_bucket, result_key) is None
    listed = moto.client("s3").list_objects_v2(Bucket=encrypted_bucket).get("Contents", [])
    assert [item["Key"] for item in listed] == [f"{result_key}.v0"]  # what XCom points at stays


@pytest.mark.cluster
async def test_an_image_without_boto3_fetches_its_payload_and_writes_its_result_through_presigned_urls(
    moto: MotoAws, hook: BatchHook, encrypted_bucket: str, slurm_connection: str, tmp_path: Path
) -> None:
    """The 'image' is the test cluster's python3 (cloudpickle, no boto3), started as hpcuser over SSH."""
    assert "ModuleNotFoundError" in cluster.ssh("python3 -c 'import boto3' 2>&1 || true")
    key = JobKey.for_task_instance("python_runner_batch", "presigned", uuid.uuid4().hex, -1, 1)
    data = os.urandom(50_000)
    call = serialize_call(summarize, (data,), {"label": "presigned"})
    body = encode_body(call.data)
    payload_key = s3_objects.payload_key(PREFIX, key)
    stored = s3_objects.store_payload(hook, encrypted_bucket, payload_key, body, presign_s=3600)
    result_key = f"{PREFIX}/{key.task_digest}/try{key.try_number}.result"  # a presigned PUT names one key
    target = s3_objects.result_target(hook, encrypted_bucket, result_key, presign_result_s=3600)
    manifest = PayloadManifest.for_call(call, stored, target)
    job_id = f"job-{uuid.uuid4().hex[:8]}"

    env = container_env(moto, manifest, job_id)
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name)  # no credentials in this container: the URLs are all it has
    python, flag, loader = batch_command("python3")
    script = remote_shell.export_lines(env) + f"{python} {flag} {remote_shell.quote(loader)}\n"
    transport = SshTransport(SlurmHook(slurm_connection).get_target())
    try:
        with uploads_stating_encryption(tmp_path) as stated:
            container = await transport.run(script)
    finally:
        await transport.close()
    assert container.exit_status == 0, container.error_text
    assert container.text == "summarizing presigned: 50000 bytes\n"

    text = s3_objects.read_result(hook, encrypted_bucket, result_key)
    assert text is not None
    document = ResultDocument.parse(text, result_key)
    assert document.executable == "/usr/bin/python3"
    value = return_value(
        document,
        serializer=load_serializer(),
        multiple_outputs=False,
        reference=s3_objects.referencer(document, CONN_ID),
    )
    assert value == {"label": "presigned", "sha256": hashlib.sha256(data).hexdigest(), "echo": data}
    assert stated == {result_key: "AES256"}  # the signed headers were sent
    s3_objects.delete(hook, encrypted_bucket, [payload_key, result_key])
