"""A worker process reaches a cluster over one SSH connection, counted at the login node.

What a task does on the worker (a Python task: the version probe, the submission, then the result
read and the clean-up; a plain task: the submission, then the failed job's last lines) goes over
one connection per process. Counted where it costs: in the login node's sshd log, by a key only
these tests log in with (``Accepted publickey ... <its fingerprint>``). Each connection is a key
exchange, a login and an sshd process on a shared login node. (The key is added to the test user's
authorized keys for the test and removed after it; ``tests/cluster/up.sh`` rewrites that file, so
these tests must not overlap a cluster start-up, which one pytest session never does.)

The triggers run under the usual key (``slurm_local``): in a deployment they run in the triggerer,
whose one shared connection is counted by ``bench/slurm_poller.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG, task
from airflow.sdk.exceptions import TaskDeferred

from airflow_hpc_provider.errors import JobFailedError
from airflow_hpc_provider.hooks import worker_link
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator
from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
from tests.integration import cluster

pytestmark = pytest.mark.cluster

CONN_ID = "slurm_counted"
SSHD_LOG = cluster.CLUSTER_DIR / "ssh" / "sshd.log"
AUTHORIZED = cluster.CLUSTER_DIR / "ssh" / "authorized_keys.d" / cluster.USER


class FakeTI:
    """What the operator reads of a task instance when it runs outside Airflow's task runner."""

    def __init__(self, task_id: str) -> None:
        self.dag_id, self.task_id, self.run_id = "worker_connection", task_id, uuid.uuid4().hex
        self.map_index, self.try_number = -1, 1
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


class LoginNodeCount:
    """The logins sshd accepted with one key since a mark."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.offset = SSHD_LOG.stat().st_size

    def accepted(self) -> int:
        with SSHD_LOG.open("rb") as log:
            log.seek(self.offset)
            text = log.read().decode(errors="replace")
        return sum(1 for line in text.splitlines() if "Accepted publickey" in line and self.fingerprint in line)


@pytest.fixture
def counted_key(
    cluster_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LoginNodeCount]:
    """A key of its own for the login node, on a connection of its own; removed afterwards."""
    key = tmp_path / "counted_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)], check=True)
    public = key.with_suffix(".pub").read_text().strip()
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(key)], check=True, capture_output=True, text=True)
    fingerprint = listed.stdout.split()[1]
    with AUTHORIZED.open("a") as authorized:
        authorized.write(f"{public}\n")
    conn = json.loads(cluster_env["AIRFLOW_CONN_SLURM_LOCAL"])
    conn["extra"] = {**conn["extra"], "key_file": str(key)}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_CONN_SLURM_LOCAL", cluster_env["AIRFLOW_CONN_SLURM_LOCAL"])
    try:
        yield LoginNodeCount(fingerprint)
    finally:
        worker_link._link.close()  # this process is the worker: its connection ends with it
        kept = [line for line in AUTHORIZED.read_text().splitlines() if line.strip() != public]
        AUTHORIZED.write_text("".join(f"{line}\n" for line in kept))


def start(operator: Any, ti: FakeTI) -> SlurmJobTrigger:
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({"ti": ti})
    trigger = deferred.value.trigger
    assert isinstance(trigger, SlurmJobTrigger)
    return trigger


def event_of(trigger: SlurmJobTrigger) -> dict[str, Any]:
    """Run the job's trigger to its event, as the triggerer would (on the usual key)."""
    _, arguments = trigger.serialize()
    watching = SlurmJobTrigger(**{**arguments, "conn_id": "slurm_local"})

    async def first() -> dict[str, Any]:
        events = watching.run()
        try:
            async with asyncio.timeout(180):
                event = await anext(events)
        finally:
            await events.aclose()
        return dict(event.payload)

    return asyncio.run(first())


def test_a_python_tasks_probe_submission_result_read_and_cleanup_reach_the_login_node_over_one_connection(
    counted_key: LoginNodeCount,
) -> None:
    with DAG("worker_connection", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.slurm(
            task_id="doubled",
            slurm_conn_id=CONN_ID,
            setup=["export PATH=/usr/bin:/bin", "unset PYTHONPATH VIRTUAL_ENV"],
            poll_interval=1,
            deferrable=True,
            time_limit=timedelta(minutes=5),
        )
        def doubled(x: int) -> int:
            return 2 * x

        operator = doubled(21).operator
    ti = FakeTI("doubled")
    trigger = start(operator, ti)  # the version probe, then the submission
    assert counted_key.accepted() == 1
    event = event_of(trigger)
    assert operator.execute_complete({"ti": ti}, event) == 42  # the result read, then the clean-up
    assert counted_key.accepted() == 1


def test_a_plain_tasks_submission_and_its_failed_jobs_last_lines_reach_the_login_node_over_one_connection(
    counted_key: LoginNodeCount,
) -> None:
    with DAG("worker_connection", schedule=None, start_date=datetime(2026, 1, 1)):
        operator = SlurmSubmitOperator(
            task_id="fails",
            slurm_conn_id=CONN_ID,
            command="echo 'the last words'; exit 3",
            poll_interval=1,
            deferrable=True,
            time_limit=timedelta(minutes=5),
        )
    ti = FakeTI("fails")
    event = event_of(start(operator, ti))
    with pytest.raises(JobFailedError, match="the last words"):  # read with the job's last lines
        operator.execute_complete({"ti": ti}, event)
    assert counted_key.accepted() == 1
