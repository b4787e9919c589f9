"""Many tasks inside one long Slurm allocation: book it, run tenants in it, release it.

* :class:`SlurmAllocationOperator` books a *reservation*: a batch job, named after it, whose main
  process is a tmux server. Optionally persistent: it resubmits itself before its time limit.
* :class:`SlurmTenantOperator` starts a task's command as a tmux session inside the reservation's
  running allocation (one SSH round trip, no queue wait) and waits for it, deferred by default.
* :class:`SlurmReleaseOperator` cancels the reservation's job(s).

The allocation's two operators live in :mod:`.slurm_allocation` and are importable from here too.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from airflow.sdk import Context
from airflow.triggers.base import TriggerEvent

from airflow_hpc_provider.config import default_poll_interval_s
from airflow_hpc_provider.dialects import directives, slurm_allocation, slurm_tenant
from airflow_hpc_provider.dialects.slurm_tenant import LaunchWord, TenantSpec
from airflow_hpc_provider.dialects.slurm_tenant_poll import SlurmTenantDialect
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.git_pin import GitSource
from airflow_hpc_provider.hooks.slurm import SlurmHook
from airflow_hpc_provider.hooks.slurm_tenant import (
    launch_tenant,
    stop_tenants,
)
from airflow_hpc_provider.hooks.ssh import read_log_tail
from airflow_hpc_provider.hooks.worker_link import on_cluster
from airflow_hpc_provider.operators.base import StopCause
from airflow_hpc_provider.operators.env_layers import ENV_RULE_FIELDS, LayeredEnvOperator
from airflow_hpc_provider.operators.git_pinned import GitPinnedPartial, pinned_working_dir
from airflow_hpc_provider.operators.slurm_allocation import (
    SlurmAllocationOperator,
    SlurmReleaseOperator,
    reservation_site,
)
from airflow_hpc_provider.resources import (
    check_env_names,
    check_positive,
    check_single_line,
    parse_memory_mb,
)
from airflow_hpc_provider.triggers.slurm_tenant import SlurmTenantTrigger, watched_tenant
from airflow_hpc_provider.watching.events import WatchOutcome
from airflow_hpc_provider.watching.ssh_watch import watch_job

# A tenant's env is sourced in the allocation right before its srun step: see directives.
TENANT_ENV_RULES = directives.SHELL_ENV_RULES + directives.TENANT_ENV_RULES


class SlurmTenantOperator(GitPinnedPartial, LayeredEnvOperator):
    """Run a command as a tenant of a booked allocation and wait for it, deferred by default.

    The command starts at once in the reservation's running allocation (one SSH round trip, no
    queue wait) as a tmux session of its own, with its own log file and exit status. A retry of
    the same task instance adopts the session an earlier try left running. Stopping the task
    (mark failed, timeout, worker kill) stops only this tenant; the allocation lives on.

    If the allocation ends (time limit, scancel, node failure) while the tenant runs, the task
    fails with the allocation's state as the reason. With a persistent allocation, a retry of the
    task starts in the newest allocation of the reservation.

    :param reservation: the reservation to run in; templated.
    :param command: shell command(s) run by bash; templated.
    :param slurm_conn_id: Airflow connection of type ``slurm``; templated.
    :param cpus: CPUs for this tenant. With it, the command runs as a job step of exactly that many
        CPUs and a share of the allocation's memory, and waits (saying so in its log) while other
        tenants hold the allocation's CPUs; without it, tenants share the allocation freely.
    :param memory: memory of the tenant's step (only with ``cpus``): MiB or ``"512M"``. Default:
        the allocation's memory per CPU times ``cpus`` (4 CPUs and 8G: 2G for a ``cpus=1`` tenant),
        so tenants whose CPUs fit always run side by side.
    :param env: environment variables; templated. Values travel in a file only the user can read,
        never on a command line.
    :param setup: lines run before the command; templated.
    :param working_dir: the command's working directory; templated.
    :param login_shell: run the command under ``bash -l``; default: the connection's setting.
    :param poll_interval: seconds between polls (one query per cluster for all tenants); default:
        the connection's ``poll_interval``, else ``[hpc] default_poll_interval`` (10).
    :param deferrable: wait in the triggerer or on the worker; default: ``[hpc] default_deferrable``
        (True).
    :param log_tail_lines: lines of the tenant's log quoted in the error when it fails.
    :param skip_on_exit_code: an exit code, or a list of them, that marks the task skipped.
    :param git: run the command in a checkout of a git repository pinned to the commit ``ref``
        names when the task starts (``{"repo": ..., "ref": "main", "path": ..., "key_conn_id": ...}``);
        a relative ``working_dir`` resolves inside it. See docs/git_pinned.rst.
    """

    template_fields: Sequence[str] = (
        "reservation",
        "command",
        "env",
        "setup",
        "working_dir",
        "slurm_conn_id",
        *ENV_RULE_FIELDS,
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"command": "bash", "env": "json"}
    ui_color = "#e8f7ee"

    def __init__(
        self,
        *,
        reservation: str,
        command: str,
        slurm_conn_id: str = SlurmHook.default_conn_name,
        cpus: int | None = None,
        memory: int | str | None = None,
        env: Mapping[str, str] | None = None,
        setup: Sequence[str] = (),
        working_dir: str | None = None,
        login_shell: bool | None = None,
        poll_interval: float | None = None,
        deferrable: bool | None = None,
        log_tail_lines: int = 20,
        skip_on_exit_code: int | Iterable[int] | None = None,
        git: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(deferrable=deferrable, skip_on_exit_code=skip_on_exit_code, **kwargs)
        self.git_source = GitSource.parse(git, self.task_id)  # docs/git_pinned.rst
        if "{{" not in reservation:
            slurm_allocation.check_reservation(reservation)
        if not isinstance(command, str) or not command.strip():
            raise JobSpecError(f"{self.task_id}: command must be a non-empty string")
        if poll_interval is not None and poll_interval <= 0:
            raise JobSpecError(f"{self.task_id}: poll_interval={poll_interval!r} must be more than zero")
        self.reservation = reservation
        self.command = command
        self.slurm_conn_id = slurm_conn_id
        self.cpus = check_positive(cpus, "cpus")
        self.memory_mb = parse_memory_mb(memory)
        if self.memory_mb is not None and self.cpus is None:
            raise JobSpecError("memory= applies to the tenant's own job step: give cpus= with it")
        self.env = dict(env or {})
        check_env_names(tuple(self.env))
        directives.check_env_names(self.env, TENANT_ENV_RULES)
        self.setup = list(setup)
        self.working_dir = working_dir
        self.login_shell = login_shell
        self.poll_interval = poll_interval
        self.log_tail_lines = log_tail_lines
        self._tenant_id: str | None = None
        self._tenant_conn_id: str | None = None  # the connection the trigger watched it on, once known
        self._log_dir: str | None = None
        self._cursor_path: str | None = None

    def refused_rule_names(self) -> Sequence[directives.EnvRule]:
        # The submitting shell never sees a rule's variable (only its carrier): srun's stay refused.
        return directives.TENANT_ENV_RULES

    def _spec(self, login_shell: bool) -> TenantSpec:
        env = {str(name): str(value) for name, value in self.env.items()}
        check_env_names(tuple(env))
        directives.check_env_names(env, TENANT_ENV_RULES)
        if not isinstance(self.command, str):
            raise JobSpecError(f"command must be a string, not {type(self.command).__name__}")
        return TenantSpec(
            command=self.command,
            setup=tuple(check_single_line(line, "setup") for line in self.setup),
            login_shell=login_shell,
            working_dir=self.working_dir,
            cpus=self.cpus,
            memory_mb=self.memory_mb,
            env=env,
        )

    def execute(self, context: Context) -> str:
        site = reservation_site(self.slurm_conn_id, self.reservation, self.login_shell)
        reservation, conn, target, defaults = site.reservation, site.conn, site.target, site.defaults
        spec = self._spec(site.login_shell)
        # git= pins the commit and makes its checkout on the cluster (docs/git_pinned.rst).
        spec = replace(spec, working_dir=pinned_working_dir(self, context, target, defaults.log_dir, spec.working_dir))
        # Rule variables travel as the task's env does (the tenant's private env file).
        environment = self.layered_job_environment(
            conn_id=conn.conn_id,
            extra=conn.extra_dejson,
            facts={"scheduler": "slurm_tenant", "partition": defaults.partition, "account": defaults.account},
            env=spec.env,
        )
        spec = dataclasses.replace(spec, env=environment.variables, setup=(*environment.prelude, *spec.setup))
        key = self.job_key(context)
        launched = on_cluster(target, lambda t: launch_tenant(t, reservation, spec, key=key, log_dir=defaults.log_dir))
        assert launched.allocation_id is not None and launched.try_number is not None  # STARTED/ADOPTED/DONE
        tenant = slurm_tenant.tenant_id(launched.allocation_id, key, launched.try_number)
        self._tenant_id, self._log_dir = tenant, defaults.log_dir
        self._cursor_path = watched_tenant(tenant, defaults.log_dir).cursor_path
        where = f"allocation {launched.allocation_id} (reservation {reservation!r}) on {self.slurm_conn_id}"
        if launched.word is LaunchWord.STARTED:
            self.log.info("Started Slurm tenant %s in %s", tenant, where)
        elif launched.word is LaunchWord.ADOPTED:
            self.log.info(
                "Adopted Slurm tenant %s in %s: try %s of this task started it", tenant, where, launched.try_number
            )
        elif launched.try_number != key.try_number:
            self.log.warning(
                "Adopted Slurm tenant %s in %s: try %s of this task started it and it already ended while nothing "
                "watched it. It is not run again: its outcome decides this try, and its output follows. If it "
                "failed, the next retry starts a new tenant.",
                tenant,
                where,
                launched.try_number,
            )
        else:
            self.log.info("Slurm tenant %s in %s already ended; reading its outcome", tenant, where)
        self.push_xcom(context, "slurm_tenant_id", tenant)
        self.push_xcom(context, "slurm_allocation_job_id", launched.allocation_id)

        interval = self.poll_interval or defaults.poll_interval_s or default_poll_interval_s()
        deadline = self.trigger_deadline()
        if self.deferrable:
            self.defer(
                trigger=SlurmTenantTrigger(
                    slurm_conn_id=self.slurm_conn_id,
                    tenant_id=tenant,
                    log_dir=defaults.log_dir,
                    poll_interval=interval,
                    deadline=deadline,
                ),
                method_name="execute_complete",
            )
        watched = watched_tenant(tenant, defaults.log_dir)
        # On the worker, Airflow's own execution_timeout applies (and calls on_kill, which stops it).
        result = asyncio.run(
            watch_job(
                target,
                SlurmTenantDialect(defaults.log_dir),
                watched,
                self.log,
                interval_s=interval,
                deadline=None,
            )
        )
        return self.execute_complete(
            context, {**result.to_dict(), "slurm_conn_id": self.slurm_conn_id, "log_path": watched.log_path}
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | TriggerEvent) -> str:
        payload = event.payload if isinstance(event, TriggerEvent) else event
        outcome = WatchOutcome.from_dict(payload)
        self._tenant_conn_id = str(payload.get("slurm_conn_id", self.slurm_conn_id))
        self._tenant_id = outcome.job_id
        self._cursor_path = payload.get("cursor_path") or self._cursor_path
        return self.finish(outcome, payload, where=self._tenant_conn_id)

    stop_words = ("stopping", "stopped")
    tail_heading = "last lines of the tenant's log"
    job_word = "tenant"

    @property
    def job_noun(self) -> str:
        return "Slurm tenant"

    def failure_tail(self, payload: Mapping[str, Any]) -> str:
        return self._tail(self._stop_conn_id, str(payload.get("log_path", "")))

    def _tail(self, conn_id: str, log_path: str) -> str:
        if not log_path or self.log_tail_lines <= 0:
            return ""
        try:
            return on_cluster(
                SlurmHook(conn_id).get_target(), lambda t: read_log_tail(t, log_path, self.log_tail_lines)
            )
        except Exception as error:  # the failure itself matters more than its last lines
            self.log.warning("could not read the tenant's last lines: %s", error)
            return ""

    def stop_job(self, job_id: str, cause: StopCause) -> str:
        # Claimed as it is stopped: a tenant stopped on purpose is never adopted by a retry.
        claims = () if self._cursor_path is None else (self._cursor_path,)
        target = SlurmHook(self._stop_conn_id).get_target()
        said = on_cluster(target, lambda t: stop_tenants(t, [job_id], claims=claims))
        return f"Stopping Slurm tenant {job_id} on {self._stop_conn_id}: {said.strip()}"

    @property
    def _stop_conn_id(self) -> str:
        return self._tenant_conn_id or self.slurm_conn_id

    def on_kill(self) -> None:
        """Worker-side kill (non-deferrable path, or the worker's own timeout): stop our tenant only."""
        if self._tenant_id is not None:
            self.stop_from_a_fresh_thread(self._tenant_id, StopCause.KILLED)


__all__ = ["SlurmAllocationOperator", "SlurmReleaseOperator", "SlurmTenantOperator"]
