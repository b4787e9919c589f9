"""Book, find and release tenant allocations, and launch or stop tenants: one SSH round trip each.

Built on :class:`~airflow_hpc_provider.hooks.ssh.SshTransport` and the pure functions in
:mod:`airflow_hpc_provider.dialects.slurm_tenant`. The reservation name is looked up with
``squeue`` on every call, never remembered: a persistent allocation changes job id as it goes.
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow_hpc_provider.dialects import slurm_allocation, slurm_tenant
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.dialects.slurm_allocation import AllocationFound, AllocationSpec, Released
from airflow_hpc_provider.dialects.slurm_tenant import LaunchOutcome, LaunchWord, TenantSpec
from airflow_hpc_provider.errors import AllocationError, RemoteCommandError, SubmissionError
from airflow_hpc_provider.hooks.ssh import SshTransport
from airflow_hpc_provider.jobs import JobKey, claim_marker


def rebook_hint(reservation: str) -> str:
    return (
        f"release it (SlurmReleaseOperator(reservation={reservation!r}) or scancel) and book it again "
        f"with SlurmAllocationOperator(reservation={reservation!r}, ...), which starts the tmux server "
        "tenants are launched into"
    )


async def book_allocation(transport: SshTransport, spec: AllocationSpec, *, log_dir: str) -> AllocationFound:
    result = await transport.run(slurm_allocation.book_script(spec, log_dir=log_dir))
    if result.exit_status != 0:
        raise SubmissionError("sbatch", transport.target.where, result.exit_status, result.error_text or result.text)
    try:
        found = slurm_allocation.parse_book_output(result.text)
    except ValueError as error:
        raise SubmissionError("sbatch", transport.target.where, result.exit_status, str(error)) from None
    if not found.ours:
        raise AllocationError(
            f"reservation {spec.reservation!r} on {transport.target.where} is already taken by job {found.job_id}, "
            "which was not booked by this provider (it has no tmux server for tenants): "
            + rebook_hint(spec.reservation),
            reservation=spec.reservation,
            job_id=found.job_id,
        )
    return found


async def find_allocation(transport: SshTransport, reservation: str) -> AllocationFound:
    result = await transport.run(slurm_allocation.find_script(reservation))
    if result.exit_status != 0:
        raise RemoteCommandError("squeue", transport.target.where, result.exit_status, result.error_text or result.text)
    return slurm_allocation.parse_find_output(result.text)


async def release_allocation(transport: SshTransport, reservation: str) -> Released:
    result = await transport.run(slurm_allocation.release_script(reservation))
    if result.exit_status != 0:
        raise RemoteCommandError(
            "scancel", transport.target.where, result.exit_status, result.error_text or result.text
        )
    return slurm_allocation.parse_release_output(result.text)


async def launch_tenant(
    transport: SshTransport, reservation: str, spec: TenantSpec, *, key: JobKey, log_dir: str
) -> LaunchOutcome:
    """Start the task's tenant in the allocation (or adopt its live session); raise a clear error
    when the reservation cannot take it."""
    script = slurm_tenant.launch_script(reservation, spec, key=key, log_dir=log_dir)
    result = await transport.run(script)
    where = transport.target.where
    if result.exit_status != 0:
        raise SubmissionError(
            "tenant launch (srun + tmux)", where, result.exit_status, (result.error_text + result.text).strip()
        )
    try:
        outcome = slurm_tenant.parse_launch_output(result.text)
    except ValueError as error:
        raise SubmissionError("tenant launch (srun + tmux)", where, result.exit_status, str(error)) from None
    if outcome.word is LaunchWord.NOALLOC:
        raise AllocationError(
            f"reservation {reservation!r} is unknown on {where}: no queued or running job of this user has that "
            f"name; book it first with SlurmAllocationOperator(reservation={reservation!r}, ...)",
            reservation=reservation,
        )
    if outcome.word is LaunchWord.NOTRUNNING:
        raise AllocationError(
            f"reservation {reservation!r} (Slurm job {outcome.allocation_id}) on {where} is not running: "
            f"{outcome.detail or 'state unknown'}; tenants start only in a running allocation",
            reservation=reservation,
            job_id=outcome.allocation_id,
        )
    if outcome.word in (LaunchWord.NOTOURS, LaunchWord.NOSERVER):
        found = (
            "was not booked by this provider"
            if outcome.word is LaunchWord.NOTOURS
            else f"has no tmux server on socket {slurm_allocation.socket_name(outcome.allocation_id or '')} "
            f"(tmux said: {outcome.detail!r})"
        )
        raise AllocationError(
            f"reservation {reservation!r} (Slurm job {outcome.allocation_id}) on {where} {found}, "
            f"so it cannot host tenants: {rebook_hint(reservation)}",
            reservation=reservation,
            job_id=outcome.allocation_id,
        )
    return outcome


async def stop_tenants(transport: SshTransport, tenant_ids: Sequence[str], *, claims: Sequence[str] = ()) -> str:
    """Stop tenants; ``claims`` are their cursor paths, marked first so that no later try adopts a
    tenant stopped on purpose (see :func:`~airflow_hpc_provider.jobs.claim_marker`)."""
    marks = "".join(f": > {quote(claim_marker(path))}\n" for path in claims)
    result = await transport.run(marks + slurm_tenant.stop_script(tenant_ids))
    if result.exit_status != 0:
        raise RemoteCommandError(
            "tenant stop (srun + tmux)", transport.target.where, result.exit_status, result.error_text or result.text
        )
    return result.text
