"""Cancelling jobs on a cluster reached over SSH: one script, the claims written first."""

from __future__ import annotations

from collections.abc import Sequence

from airflow_hpc_provider.dialects.base import SchedulerDialect
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.errors import RemoteCommandError
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import claim_marker


async def cancel_jobs(
    transport: SshTransport, dialect: SchedulerDialect, job_ids: Sequence[str], *, claims: Sequence[str] = ()
) -> None:
    """Cancel jobs in one script; ``claims`` are their cursor paths, marked first so no later try
    adopts a job cancelled on purpose (see :func:`~airflow_hpc_provider.jobs.claim_marker`)."""
    marks = "".join(f": > {quote(claim_marker(path))}\n" for path in claims)
    result = await transport.run(marks + dialect.cancel_script(job_ids))
    if result.exit_status != 0:
        raise RemoteCommandError(
            f"cancel of {dialect.name} job(s) {', '.join(job_ids)}",
            transport.target.where,
            result.exit_status,
            result.error_text or result.text,
        )
