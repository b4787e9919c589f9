"""The trigger a deferred ``SlurmTenantOperator`` waits on: one tenant, watched through the shared poller.

All tenants on one cluster share one poller (one SSH connection, one script per interval that asks
``squeue`` about every allocation and reads every tenant's exit sentinel).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from airflow_hpc_provider.dialects.slurm_tenant import TenantRef
from airflow_hpc_provider.dialects.slurm_tenant_poll import SlurmTenantDialect
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.jobs import WatchedJob
from airflow_hpc_provider.triggers.base import HpcTrigger
from airflow_hpc_provider.watching.ssh_watch import cancel_job, watch_job


class SlurmTenantTrigger(HpcTrigger):
    """Streams a tenant's log into the task log and fires once when its exit status appears
    (or its allocation ends under it).

    :param slurm_conn_id: the connection the tenant was launched through.
    :param tenant_id: ``<allocation job id>:<task digest>:<try>``.
    :param log_dir: the connection's log directory on the cluster (tenant files live below it).
    :param poll_interval: seconds between polls (shared by every tenant on the cluster).
    :param deadline: epoch seconds; past it the trigger fires ``timeout`` and the operator stops the tenant.

    ``on_kill`` stops this tenant's session only; the allocation and its other tenants are never touched.
    """

    fields = ("slurm_conn_id", "tenant_id", "log_dir", "poll_interval", "deadline")
    stop_words = ("Stopping", "Stopped")

    def __init__(
        self,
        slurm_conn_id: str,
        tenant_id: str,
        log_dir: str,
        poll_interval: float = 10.0,
        deadline: float | None = None,
    ) -> None:
        super().__init__()
        TenantRef.parse(tenant_id)  # a bad id fails here, not in the middle of a shared poll
        self.slurm_conn_id = slurm_conn_id
        self.tenant_id = tenant_id
        self.log_dir = log_dir
        self.poll_interval = poll_interval
        self.deadline = deadline

    @property
    def watched(self) -> WatchedJob:
        return watched_tenant(self.tenant_id, self.log_dir, claimed=True)

    async def _target(self) -> SshTarget:
        target = SshTarget.from_connection(await BaseHook.aget_connection(self.slurm_conn_id))
        return target

    def describe(self) -> str:
        return f"Slurm tenant {self.tenant_id} on {self.slurm_conn_id}"

    async def follow(self) -> dict[str, Any]:
        dialect = SlurmTenantDialect(self.log_dir)
        target = await self._target()
        outcome = await watch_job(
            target, dialect, self.watched, self.log, interval_s=self.poll_interval, deadline=self.deadline
        )
        return {
            **outcome.to_dict(),
            "slurm_conn_id": self.slurm_conn_id,
            "log_path": self.watched.log_path,
            "cursor_path": self.watched.cursor_path,
        }

    async def stop(self) -> None:
        await cancel_job(
            await self._target(), SlurmTenantDialect(self.log_dir), self.tenant_id, cursor_path=self.watched.cursor_path
        )


def watched_tenant(tenant_id: str, log_dir: str, *, claimed: bool = False) -> WatchedJob:
    """The tenant as the poller follows it; ``claimed``: a trigger watches it (see WatchedJob)."""
    directory = TenantRef.parse(tenant_id).directory(log_dir)
    return WatchedJob(
        job_id=tenant_id, log_path=f"{directory}/log", cursor_path=f"{directory}/cursor", claimed_by_trigger=claimed
    )
