"""A tenant whose allocation was requeued is over: the allocation's tmux server restarted without it."""

from __future__ import annotations

from airflow_hpc_provider.dialects.slurm_tenant import TenantRef
from airflow_hpc_provider.dialects.slurm_tenant_poll import TenantFiles, observe_tenant, parse_sentinels
from airflow_hpc_provider.jobs import JobState

TENANT = "4242:0123456789abcdef0123:2"
OTHER = "4242:fedcba98765432100123:1"
REF = TenantRef.parse(TENANT)


def test_the_poll_reads_each_tenants_exit_status_and_the_allocation_run_it_started_in() -> None:
    text = f"{TENANT}|3 exited\nrun 0\n\n{OTHER}|run 1\n\n"

    assert parse_sentinels(text, [TENANT, OTHER]) == {
        TENANT: TenantFiles(exit="3 exited", started_run=0),
        OTHER: TenantFiles(exit=None, started_run=1),
    }


def test_a_tenant_launched_before_runs_were_recorded_reads_as_no_run() -> None:
    assert parse_sentinels(f"{TENANT}|\n", [TENANT]) == {TENANT: TenantFiles(exit=None, started_run=None)}


def test_a_tenant_in_a_requeued_allocation_fails_at_once_instead_of_running_forever() -> None:
    for native in ("REQUEUED", "PENDING", "RUNNING"):
        seen = observe_tenant(REF, TENANT, None, (native, "None"), started_run=0, restarts=1)
        assert seen.final and seen.status is not None and seen.status.state is JobState.FAILED
        assert "requeued" in (seen.status.reason or "")


def test_a_tenant_started_after_the_requeue_runs_on() -> None:
    seen = observe_tenant(REF, TENANT, None, ("RUNNING", "None"), started_run=1, restarts=1)
    assert not seen.final and seen.status is not None and seen.status.state is JobState.RUNNING


def test_an_exit_status_written_before_the_requeue_still_decides() -> None:
    seen = observe_tenant(REF, TENANT, "0 exited", ("PENDING", "BeginTime"), started_run=0, restarts=1)
    assert seen.final and seen.status is not None and seen.status.state is JobState.COMPLETED
