"""The real stack (tests/deployment/conftest.py) with an ``aws`` connection to the test's moto server.

moto runs in this pytest process (``tests/integration/batch/conftest.py``), where it holds jobs
RUNNING; the stack's processes reach it over HTTP on 127.0.0.1 through the connection created here
with the REST API (a connection in the metadata database is seen by every component).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.deployment.dags.scenario_common import BATCH_CONN_ID, BATCH_MAX_ARRAY_SIZE
from tests.deployment.stack import AirflowStack, StackError
from tests.integration.batch.conftest import moto_aws  # noqa: F401  (one moto server per session)
from tests.integration.batch.moto_batch import REGION, MotoAws


@dataclass
class BatchStack:
    stack: AirflowStack
    aws: MotoAws
    queue: str


@pytest.fixture(scope="session")
def batch_connection(stack: AirflowStack, moto_aws: MotoAws) -> Iterator[str]:  # noqa: F811
    queue = moto_aws.make_queue(f"dep-{uuid.uuid4().hex[:8]}", held=True)
    body = {
        "connection_id": BATCH_CONN_ID,
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": json.dumps(
            {
                "region_name": REGION,
                "endpoint_url": moto_aws.url,
                "job_queue": queue,
                "max_array_size": BATCH_MAX_ARRAY_SIZE,  # mapped tasks' arrays (single jobs ignore it)
            }
        ),
    }
    with contextlib.suppress(StackError):  # left by an earlier session of the same stack home
        stack.request("DELETE", f"/api/v2/connections/{BATCH_CONN_ID}")
    stack.request("POST", "/api/v2/connections", body)
    yield queue


@pytest.fixture
def batch_stack(one_triggerer: AirflowStack, moto_aws: MotoAws, batch_connection: str) -> BatchStack:  # noqa: F811
    return BatchStack(one_triggerer, moto_aws, batch_connection)
