"""Python functions as AWS Batch jobs through ``@task.batch``: the DAG ``test_batch_python_tasks.py`` runs.

One independent task per outcome, so one ``airflow dags test`` runs them all: a value returned
into XCom (``multiple_outputs``, watched on the worker), a raised exception and a 1 MB argument
(through S3), both deferred, and an image stated to run another Python than the worker's (refused
before submission).
"""

from __future__ import annotations

import os
import random
import string
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

BATCH = {
    "aws_conn_id": "aws_batch",
    "image": "repo/python:3.11",
    "payload_bucket": os.environ.get("PY_BATCH_BUCKET", "unset-bucket"),
    "payload_prefix": "tests/python",
    "poll_interval": 1,
    "timeout": timedelta(minutes=5),
}


def check_input(value: int) -> int:
    if value > 10:
        raise ValueError(f"bad input {value}: at most 10")
    return value


with DAG(dag_id="py_batch_outcomes", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["test"]):
    # Watched on the worker (deferrable=False): the value comes back through the same path.
    @task.batch(multiple_outputs=True, deferrable=False, **BATCH)
    def describe(a: int, b: int) -> dict[str, Any]:
        import os

        print(f"adding {a} and {b} in AWS Batch job {os.environ['AWS_BATCH_JOB_ID']}")
        return {"sum": a + b, "job": os.environ["AWS_BATCH_JOB_ID"]}

    @task
    def check_outputs(total: int, job: str) -> None:
        print(f"outputs as XComs: sum={total} job={job}")

    described = describe(40, b=2)
    check_outputs(described["sum"], described["job"])

    @task.batch(**BATCH)
    def validate(value: int) -> int:
        return check_input(value) * 2

    validate(11)

    @task
    def make_data() -> str:
        import random

        return random.Random(15).randbytes(500_000).hex()  # 1 MB of text, 500 KB once compressed

    @task.batch(**BATCH)
    def digest(data: str) -> str:
        import hashlib

        return hashlib.sha256(data.encode()).hexdigest()

    @task
    def compare(data: str, remote_digest: str) -> None:
        import hashlib

        local = hashlib.sha256(data.encode()).hexdigest()
        print(f"the {len(data)}-character argument arrived {'whole' if local == remote_digest else 'CHANGED'}")

    data = make_data()
    compare(data, digest(data))

    # A 3 KB argument is far below the 16 KiB inline limit, but with the 5.5 KiB bootstrap it would
    # take the container's overrides past the 8,192 characters ECS starts: it goes through S3.
    @task.batch(**BATCH)
    def count_letters(text: str) -> int:
        letters = sum(character.isalpha() for character in text)
        print(f"{letters} letters in {len(text)} characters")
        return letters

    # Random letters: a pickle under 4 KiB travels uncompressed, so its base64 text is about 4.2 KB.
    count_letters("".join(random.Random(7).choices(string.ascii_lowercase, k=3000)))

    # The image runs another major.minor than this worker: refused before anything reaches AWS,
    # though its argument would have gone to S3.
    @task.batch(**{**BATCH, "image": "repo/python:3.12"}, python_version="3.12")
    def on_python_312(data: str) -> int:
        return len(data)

    on_python_312(make_data())
