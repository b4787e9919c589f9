from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from airflow_hpc_provider.watching import batch as batch_poller
from tests.integration.batch.moto_batch import HeldJobs, MotoAws, start_server

CONN_ID = "aws_moto"


@pytest.fixture(scope="session")
def moto_aws() -> Iterator[MotoAws]:
    """One moto server for the session on 127.0.0.1 and a free port, stopped at the end."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    held = HeldJobs()
    installing = held.install()
    next(installing)
    server, url = start_server()
    try:
        yield MotoAws(url=url, held=held)
    finally:
        server.stop()
        installing.close()


@pytest.fixture
def aws(moto_aws: MotoAws, monkeypatch: pytest.MonkeyPatch) -> MotoAws:
    """The ``aws_moto`` Airflow connection (type aws, endpoint_url -> moto), visible to hooks here."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", moto_aws.connection_uri())
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert not batch_poller._shared
    return moto_aws


@pytest.fixture
def queue(aws: MotoAws) -> str:
    return aws.make_queue(f"q-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def held_queue(aws: MotoAws) -> str:
    return aws.make_queue(f"held-{uuid.uuid4().hex[:8]}", held=True)
