"""Book and release a reservation: the long Slurm allocation tenants run in (see :mod:`.slurm_tenant`).

* :class:`SlurmAllocationOperator` books a *reservation*: a batch job, named after it, whose main
  process is a tmux server. Optionally persistent: it resubmits itself before its time limit.
* :class:`SlurmReleaseOperator` cancels the reservation's job(s).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from airflow.sdk import Context

from airflow_hpc_provider.dialects import directives, slurm_allocation
from airflow_hpc_provider.dialects.slurm_allocation import AllocationFound, AllocationSpec
from airflow_hpc_provider.errors import AllocationError, JobSpecError
from airflow_hpc_provider.hooks.slurm import ClusterDefaults, SlurmHook
from airflow_hpc_provider.hooks.slurm_tenant import (
    book_allocation,
    find_allocation,
    release_allocation,
)
from airflow_hpc_provider.hooks.ssh import SshTarget
from airflow_hpc_provider.hooks.worker_link import on_cluster
from airflow_hpc_provider.jobs import JobSpec
from airflow_hpc_provider.operators.base import HpcOperator
from airflow_hpc_provider.resources import (
    build_resources,
    check_single_line,
)


@dataclass(frozen=True)
class ReservationSite:
    """Where an allocation-side task works, read from its connection when it runs (the allocation
    and its tenants read it alike): the reservation name, checked once rendered; the connection
    (its extra carries env rules); the login node; the cluster defaults; the login shell to use."""

    reservation: str
    conn: Any
    target: SshTarget
    defaults: ClusterDefaults
    login_shell: bool


def reservation_site(slurm_conn_id: str, reservation: str, login_shell: bool | None) -> ReservationSite:
    checked = slurm_allocation.check_reservation(reservation)
    hook = SlurmHook(slurm_conn_id)
    conn = hook.get_conn()
    return ReservationSite(
        reservation=checked,
        conn=conn,
        target=SshTarget.from_connection(conn),
        defaults=ClusterDefaults.from_extra(conn.conn_id, conn.extra_dejson),
        login_shell=login_shell if login_shell is not None else hook.login_shell_default(conn),
    )


class SlurmAllocationOperator(HpcOperator):
    """Book a reservation: an allocation whose main process is a tmux server tenants start in.

    Booking is idempotent by name: if a queued or running allocation of yours already has this
    reservation name, it is adopted, not booked twice. Returns the allocation's Slurm job id.

    :param reservation: the friendly name (the Slurm job name); templated.
    :param slurm_conn_id: Airflow connection of type ``slurm``; templated.
    :param partition: partition name(s).
    :param account: account to charge.
    :param cpus: CPUs for the whole allocation (``--cpus-per-task``), shared by its tenants.
    :param memory: memory of the allocation: MiB as an int, or ``"4G"``.
    :param time_limit: the allocation's time limit (timedelta, minutes, or a Slurm string).
    :param nodes: number of nodes (tenants run on the first).
    :param gres: generic resources, e.g. ``"gpu:a100:2"``.
    :param extra_options: more ``#SBATCH`` options.
    :param setup: lines the allocation's script runs before starting the tmux server.
    :param persistent_lead: with a value, the allocation asks Slurm for ``USR1`` this long before
        its time limit (``--signal=B:USR1@...``) and then resubmits itself; the reservation name
        points at the newest job from then on. Slurm may send the signal up to a minute early.
    :param wait_until_running: wait (on the worker) until the allocation runs, so tenants can start.
    :param wait_timeout: give up waiting after this long (the allocation stays booked).
    """

    template_fields: Sequence[str] = ("reservation", "setup", "slurm_conn_id")
    ui_color = "#dfe9f7"

    def __init__(
        self,
        *,
        reservation: str,
        slurm_conn_id: str = SlurmHook.default_conn_name,
        partition: str | None = None,
        account: str | None = None,
        cpus: int | None = None,
        memory: int | str | None = None,
        time_limit: timedelta | str | int | None = None,
        nodes: int | None = None,
        gres: str | None = None,
        extra_options: Sequence[str] = (),
        setup: Sequence[str] = (),
        login_shell: bool | None = None,
        persistent_lead: timedelta | int | None = None,
        wait_until_running: bool = True,
        wait_timeout: timedelta = timedelta(hours=1),
        poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if "{{" not in reservation:
            slurm_allocation.check_reservation(reservation)
        self.reservation = reservation
        self.slurm_conn_id = slurm_conn_id
        self.job_resources = build_resources(
            partition=partition,
            account=account,
            nodes=nodes,
            cpus=cpus,
            memory=memory,
            time_limit=time_limit,
            gres=gres,
        )
        for option in extra_options:
            check_single_line(option, "extra_options")
            if not option.startswith("-") or option.split("=", 1)[0] in ("--job-name", "-J", "--comment", "--signal"):
                raise JobSpecError(f"extra_options: {option!r} is not an sbatch option this operator leaves to you")
            if any(use.name in directives.SLURM_ARRAY for use in directives.slurm_options(option, ["--array"])):
                # Each element would be an allocation of its own under one name: tenants would
                # land in whichever the lookup picks.
                raise JobSpecError(f"extra_options: {option!r} asks for a job array; an allocation is one job")
        self.extra_options = tuple(extra_options)
        self.setup = list(setup)
        self.login_shell = login_shell
        if isinstance(persistent_lead, int) and not isinstance(persistent_lead, bool):
            persistent_lead = timedelta(seconds=persistent_lead)
        if persistent_lead is not None:
            if not isinstance(persistent_lead, timedelta) or persistent_lead.total_seconds() < 1:
                raise JobSpecError(f"persistent_lead={persistent_lead!r} must be a positive timedelta or seconds")
            if self.job_resources.time_limit is None:
                raise JobSpecError("persistent_lead needs a time_limit: the lead is counted back from it")
            if persistent_lead >= self.job_resources.time_limit:
                raise JobSpecError(
                    f"persistent_lead={persistent_lead} must be shorter than time_limit={self.job_resources.time_limit}"
                )
        self.persistent_lead = persistent_lead
        self.wait_until_running = wait_until_running
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval

    def execute(self, context: Context) -> str:
        site = reservation_site(self.slurm_conn_id, self.reservation, self.login_shell)
        reservation, target, defaults = site.reservation, site.target, site.defaults
        # The connection's partition and account where the task names none (both checked as they were read).
        res = self.job_resources
        resources = replace(res, partition=res.partition or defaults.partition, account=res.account or defaults.account)
        spec = AllocationSpec(
            reservation=reservation,
            job=JobSpec(
                command="",
                job_name=reservation,
                resources=resources,
                setup=tuple(check_single_line(line, "setup") for line in self.setup),
                login_shell=site.login_shell,
                extra_directives=self.extra_options,
            ),
            persistent_lead_s=None if self.persistent_lead is None else int(self.persistent_lead.total_seconds()),
        )
        found = on_cluster(target, lambda t: book_allocation(t, spec, log_dir=defaults.log_dir))
        if found.submitted:
            self.log.info(
                "Booked reservation %r as Slurm job %s on %s (%s)",
                reservation,
                found.job_id,
                self.slurm_conn_id,
                found.state,
            )
        else:
            self.log.info(
                "Reservation %r is already booked as Slurm job %s on %s (%s): using it",
                reservation,
                found.job_id,
                self.slurm_conn_id,
                found.state,
            )
        if self.wait_until_running and not found.running:
            found = self._wait_running(target, reservation)
        job_id = str(found.job_id)
        self.push_xcom(context, "slurm_allocation_job_id", job_id)
        return job_id

    def _wait_running(self, target: SshTarget, reservation: str) -> AllocationFound:
        deadline = time.monotonic() + self.wait_timeout.total_seconds()
        last: str | None = None
        while True:
            found = on_cluster(target, lambda t: find_allocation(t, reservation))
            if found.job_id is None:
                raise AllocationError(
                    f"reservation {reservation!r} disappeared from the queue before it ran "
                    "(cancelled, or refused by the scheduler): see the allocation's output under the log directory",
                    reservation=reservation,
                )
            shown = f"{found.state} ({found.reason})" if found.reason and found.reason != "None" else found.state
            if shown != last:
                self.log.info("Reservation %r: Slurm job %s is %s", reservation, found.job_id, shown)
                last = shown
            if found.running:
                return found
            if time.monotonic() > deadline:
                raise AllocationError(
                    f"reservation {reservation!r} (Slurm job {found.job_id}) is still {shown} after "
                    f"{self.wait_timeout}; it stays booked",
                    reservation=reservation,
                    job_id=found.job_id,
                )
            time.sleep(self.poll_interval)


class SlurmReleaseOperator(HpcOperator):
    """Release a reservation: cancel its allocation (and a persistent one's queued successor).

    Runs whatever became of the tenants (``trigger_rule="all_done"`` unless you say otherwise), so
    a failed tenant does not leave the allocation burning its time. Jobs with the same name that
    this provider did not book are left alone and named in the log.

    :param reservation: the friendly name given at booking; templated.
    :param slurm_conn_id: Airflow connection of type ``slurm``; templated.
    """

    template_fields: Sequence[str] = ("reservation", "slurm_conn_id")
    ui_color = "#f7e8df"

    def __init__(self, *, reservation: str, slurm_conn_id: str = SlurmHook.default_conn_name, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        if "{{" not in reservation:
            slurm_allocation.check_reservation(reservation)
        self.reservation = reservation
        self.slurm_conn_id = slurm_conn_id

    def execute(self, context: Context) -> list[str]:
        reservation = slurm_allocation.check_reservation(self.reservation)
        target = SlurmHook(self.slurm_conn_id).get_target()
        released = on_cluster(target, lambda t: release_allocation(t, reservation))
        if released.job_ids:
            self.log.info(
                "Released reservation %r: cancelled Slurm job(s) %s on %s",
                reservation,
                ", ".join(released.job_ids),
                self.slurm_conn_id,
            )
        else:
            self.log.info("Reservation %r had no queued or running allocation on %s", reservation, self.slurm_conn_id)
        if released.foreign:
            self.log.warning(
                "Left alone job(s) %s named %r: not booked by this provider", ", ".join(released.foreign), reservation
            )
        return list(released.job_ids)
