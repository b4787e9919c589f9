from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deployment.dags.scenario_common import SCENARIO_DAG_IDS
from tests.deployment.stack import AirflowStack, StackError
from tests.integration import cluster

DAGS = Path(__file__).parent / "dags"


@pytest.fixture(scope="session")
def cluster_env() -> dict[str, str]:
    return cluster.bring_up()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, cluster_env: dict[str, str]) -> Iterator[AirflowStack]:
    """One real Airflow deployment for the whole session, stopped by PID at the end (also on failure)."""
    deployment = AirflowStack(tmp_path_factory.mktemp("airflow"), DAGS, extra_env=cluster_env, parallelism=2)
    try:
        started = time.monotonic()
        deployment.start(triggerers=1)
        for dag_id in SCENARIO_DAG_IDS:  # every DAG parsed before anything is measured
            deployment.wait_for_dag(dag_id)
        print(f"\nAirflow stack up in {time.monotonic() - started:.1f}s at {deployment.base_url} ({deployment.home})")
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
def one_triggerer(stack: AirflowStack) -> Iterator[AirflowStack]:
    """The stack with exactly one live triggerer before and after the test (tests kill and add some)."""

    def settle() -> None:
        live = [t for t in stack.triggerers if t.alive()]
        for extra in live[1:]:
            extra.stop()
        if not live:
            stack.start_triggerer()

    settle()
    yield stack
    settle()


@dataclass(frozen=True)
class AccountedJob:
    job_id: str
    name: str
    state: str
    start: str
    end: str


def jobs_named(prefix: str) -> list[AccountedJob]:
    """Every job whose name starts with ``prefix`` (our DAGs put the run id in it), by job id.

    From Slurm's accounting, and from the controller for the jobs slurmdbd has not recorded yet:
    slurmctld sends records to slurmdbd asynchronously, so a job that ended a moment ago may be
    missing from sacct while squeue still lists it.
    """
    out = cluster.ssh(
        "sacct -n -P -X -S now-1days -o JobIDRaw,JobName%400,State,Start,End; echo '--- squeue'; "
        "squeue -h -t all -o '%A|%j|%T|%S|%e'"
    )
    accounted, listed = out.split("--- squeue\n", 1)
    jobs: dict[str, AccountedJob] = {}
    for source in (accounted, listed):
        for line in source.splitlines():
            fields = line.split("|")
            if len(fields) == 5 and fields[1].startswith(prefix) and fields[0] not in jobs:
                jobs[fields[0]] = AccountedJob(fields[0], fields[1], fields[2].split(" ")[0], fields[3], fields[4])
    return sorted(jobs.values(), key=lambda job: (len(job.job_id), job.job_id))


def job_state(job_id: str) -> str:
    """squeue's state while the job is known there, else sacct's."""
    state = cluster.ssh(f"squeue -h -t all -j {shlex.quote(job_id)} -o %T", check=False).strip()
    if not state:
        state = cluster.ssh(f"sacct -n -X -P -j {shlex.quote(job_id)} -o State", check=False).strip()
    return state.split(" ")[0]


def cancel_jobs_named(prefix: str) -> None:
    """Leave nothing of ours running on the shared cluster (only jobs of this test's run)."""
    # By squeue's own id form: an array element as <array>_<index>. Slurm 22.05 answers
    # `scancel <raw id of an element>` with exit 0 and cancels nothing ("invalid JobId" in
    # slurmctld's log), which left an element of a failed test running into the next ones.
    listed = cluster.ssh("squeue -h -t PENDING,RUNNING,REQUEUED,SUSPENDED -o '%i|%j'")
    live = [
        fields[0]
        for line in listed.splitlines()
        if len(fields := line.split("|", 1)) == 2 and fields[1].startswith(prefix)
    ]
    if live:
        cluster.ssh("scancel " + " ".join(shlex.quote(job_id) for job_id in live), check=False)


def xcom_job_id(stack: AirflowStack, dag_id: str, run_id: str, task_id: str, key: str = "slurm_job_id") -> str:
    from urllib.parse import quote

    def read() -> str | None:
        try:
            entry = stack.get(
                f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/{key}"
            )
        except StackError:
            return None
        return str(entry["value"]).strip('"').split(".")[0]

    job_id: str = stack.wait(read, 120, f"{dag_id}/{task_id} to push its job id")
    return job_id
