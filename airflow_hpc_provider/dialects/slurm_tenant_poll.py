"""Tenants as the poller sees them: one poll reads ``squeue`` for every allocation and the sentinel
of every tenant, and :func:`observe_tenant` decides what that says of each; nothing is run on the
compute node to poll. Pure functions, like every dialect.

Every tenant writes its output to its own log file (the pane's scrollback is lossy) and, when its
command ends, its exit status to a sentinel file, written to a temporary name and renamed so a
reader never sees half of it (see :mod:`airflow_hpc_provider.dialects.slurm_tenant`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from airflow_hpc_provider.dialects import remote_shell, slurm_status
from airflow_hpc_provider.dialects.base import Observation, PollReport
from airflow_hpc_provider.dialects.remote_shell import LogRead, quote
from airflow_hpc_provider.dialects.slurm_tenant import TenantRef, stop_script
from airflow_hpc_provider.jobs import JobState, JobStatus, signal_of_shell_status

_HOSTING = frozenset({JobState.RUNNING, JobState.SUSPENDED})


def poll_script(token: str, tenant_ids: Sequence[str], reads: Sequence[LogRead], *, log_dir: str) -> str:
    """squeue once for every allocation, then every tenant's sentinel: squeue first, so a tenant
    seen without a sentinel after its allocation ended really ended without one."""
    refs = [TenantRef.parse(value) for value in tenant_ids]
    allocations = sorted({ref.allocation_id for ref in refs})
    body = remote_shell.section(
        token,
        "squeue",
        f"squeue -h -t all -j {quote(','.join(allocations))} -O 'JobID:|,State:|,Reason:|,RestartCnt:|'",
    )
    # One cat per tenant: its exit status (once written) and the allocation run it started in.
    reads_lines = "".join(
        f"printf '%s|' {quote(value)}; cat -- {remote_shell.home_relative(ref.directory(log_dir) + '/exit')} "
        f"{remote_shell.home_relative(ref.directory(log_dir) + '/allocation')} 2>/dev/null; printf '\\n'; "
        for value, ref in zip(tenant_ids, refs, strict=True)
    )
    body += remote_shell.section(token, "sentinels", reads_lines + "true")
    return remote_shell.poll_script(token, body, reads)


def _allocation_states(text: str) -> dict[str, tuple[str, str]]:
    states: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        fields = [part.strip() for part in line.split("|")]
        if len(fields) >= 3 and fields[0]:
            states[fields[0]] = (fields[1], fields[2])
    return states


def _allocation_restarts(text: str) -> dict[str, int]:
    restarts: dict[str, int] = {}
    for line in text.splitlines():
        fields = [part.strip() for part in line.split("|")]
        if len(fields) >= 4 and fields[0] and fields[3].isdigit():
            restarts[fields[0]] = int(fields[3])
    return restarts


@dataclass(frozen=True)
class TenantFiles:
    """What one poll read in a tenant's directory: its exit status line, and the run of its
    allocation it started in (``None`` for tenants launched before this was recorded)."""

    exit: str | None
    started_run: int | None


def parse_sentinels(text: str, tenant_ids: Sequence[str]) -> dict[str, TenantFiles]:
    """``<tenant>|<exit file><allocation file>`` records, as the poll script prints them."""
    wanted = set(tenant_ids)
    found: dict[str, TenantFiles] = {}
    current: str | None = None
    for line in text.splitlines():
        tenant, sep, content = line.partition("|")
        if sep and tenant in wanted:
            current, found[tenant] = tenant, TenantFiles(None, None)
            line = content
        if current is None or not line.strip():
            continue
        part = line.strip()
        if part.startswith("run ") and part[4:].isdigit():
            found[current] = TenantFiles(found[current].exit, int(part[4:]))
        elif found[current].exit is None:
            found[current] = TenantFiles(part, found[current].started_run)
    return found


def observe_tenant(
    ref: TenantRef,
    tenant: str,
    sentinel: str | None,
    allocation: tuple[str, str] | None,
    *,
    started_run: int | None = None,
    restarts: int | None = None,
) -> Observation:
    """A sentinel is final; without one, the tenant runs as long as its allocation runs, in the
    run it started in (``started_run``): once the allocation was requeued (``restarts`` grew), its
    tmux server started again without the tenant's session."""
    if sentinel is not None:
        words = sentinel.split()
        code = int(words[0]) if words and words[0].isdigit() else None
        stopped = len(words) > 1 and words[1] == "stopped"
        if stopped:
            state, native = JobState.CANCELLED, "STOPPED"
        elif code == 0:
            state, native = JobState.COMPLETED, "COMPLETED"
        else:
            state, native = JobState.FAILED, "FAILED"
        # A shell (and srun) reports death by signal N as 128+N: say which signal, as sacct would.
        signal = signal_of_shell_status(code)
        return Observation(
            JobStatus(
                job_id=tenant,
                state=state,
                native_state=native,
                exit_code=0 if signal else code,
                signal=(signal or 0) if code is not None else None,
                reason="stopped" if stopped else None,
            ),
            final=True,
        )
    if allocation is None:
        return Observation(
            JobStatus(
                job_id=tenant,
                state=JobState.LOST,
                native_state="LOST",
                reason=f"allocation {ref.allocation_id} is unknown to Slurm and the tenant left no exit status",
            ),
            final=True,
        )
    native, reason = allocation
    state = slurm_status.map_state(native, reason)
    if not state.is_terminal and started_run is not None and restarts is not None and restarts > started_run:
        return Observation(
            JobStatus(
                job_id=tenant,
                state=JobState.FAILED,
                native_state=native,
                reason=f"allocation {ref.allocation_id} was requeued after the tenant started; "
                "the tenant's session ended with it",
            ),
            final=True,
        )
    if not state.is_terminal:
        shown = JobState.RUNNING if state in _HOSTING else state
        return Observation(
            JobStatus(job_id=tenant, state=shown, native_state=native, reason=None if shown is state else reason),
            final=False,
        )
    # The allocation ended and the tenant wrote no exit status: it went down with it.
    ended = JobState.FAILED if state is JobState.COMPLETED else state
    ending_reason = slurm_status.reason_for(state, reason)
    why = f"allocation {ref.allocation_id} ended {native}" + (f" ({ending_reason})" if ending_reason else "")
    return Observation(
        JobStatus(job_id=tenant, state=ended, native_state=native, reason=why + " while the tenant ran"),
        final=True,
    )


class SlurmTenantDialect:
    """Tenants as the poller sees them: ids are ``<allocation>:<digest>:<try>`` (see
    :func:`~airflow_hpc_provider.dialects.slurm_tenant.tenant_id`)."""

    name = "Slurm tenant"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def poll_script(self, token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str:
        if not job_ids:
            return remote_shell.poll_script(token, "", reads)
        return poll_script(token, job_ids, reads, log_dir=self.log_dir)

    def read_poll(self, sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str]) -> PollReport:
        rc, text = sections.get("squeue", (1, "no squeue section in the poll's output"))
        if rc != 0 and "Invalid job id specified" not in text:
            return PollReport(observations={}, failure=f"squeue exited {rc}: {text.strip()!r}")
        allocations = _allocation_states(text) if rc == 0 else {}
        restarts = _allocation_restarts(text) if rc == 0 else {}
        if "sentinels" not in sections:
            return PollReport(observations={}, failure="no sentinel section in the poll's output")
        files = parse_sentinels(sections["sentinels"][1], job_ids)
        observations: dict[str, Observation] = {}
        for tenant in job_ids:
            ref = TenantRef.parse(tenant)
            if tenant not in files:
                continue  # not read this time: conclude nothing
            observations[tenant] = observe_tenant(
                ref,
                tenant,
                files[tenant].exit,
                allocations.get(ref.allocation_id),
                started_run=files[tenant].started_run,
                restarts=restarts.get(ref.allocation_id),
            )
        return PollReport(observations=observations)

    def cancel_script(self, job_ids: Sequence[str]) -> str:
        return stop_script(job_ids)
