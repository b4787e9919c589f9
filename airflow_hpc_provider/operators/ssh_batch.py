"""What every operator that submits a batch job over SSH shares: the author's arguments, the
submit -> defer -> complete flow, the outcome in the task log, and cancellation.

A subclass (``SlurmSubmitOperator``, ``PbsOperator``) says how its scheduler renders and submits a
job, which trigger watches it, and which dialect the worker-side watch uses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, ClassVar

from airflow.sdk import Context
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_hpc_provider.config import default_poll_interval_s
from airflow_hpc_provider.dialects.base import SchedulerDialect
from airflow_hpc_provider.dialects.directives import (
    SHELL_ENV_RULES,
    SLURM_FAMILIES,
    EnvRule,
    OptionUse,
    multi_job_requests,
)
from airflow_hpc_provider.dialects.directives import check_env_names as check_env
from airflow_hpc_provider.env_rules import JobEnvironment
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.git_pin import GitSource
from airflow_hpc_provider.hooks.cancel import cancel_jobs
from airflow_hpc_provider.hooks.ssh import SshTransport, read_log_tail
from airflow_hpc_provider.hooks.worker_link import on_cluster
from airflow_hpc_provider.jobs import (
    JobKey,
    JobSpec,
    Resources,
    WatchedJob,
)
from airflow_hpc_provider.operators.base import StopCause, rendered_number, rendered_text, unless_templated
from airflow_hpc_provider.operators.env_layers import ENV_RULE_FIELDS, LayeredEnvOperator
from airflow_hpc_provider.operators.git_pinned import GitPinnedPartial, pinned_working_dir
from airflow_hpc_provider.operators.ssh_cluster import ClusterSettings, Submitted
from airflow_hpc_provider.resources import build_resources, check_env_names, check_single_line
from airflow_hpc_provider.triggers.ssh_job import SshJobTrigger
from airflow_hpc_provider.watching.events import WatchOutcome
from airflow_hpc_provider.watching.ssh_watch import watch_job

BUSY_RETRY_DELAY = timedelta(seconds=60)
# Templated too: literal values are checked at parse time, templates right after rendering.
RESOURCE_FIELDS = ("partition", "account", "cpus", "memory", "time_limit", "gpus", "gres", "nodes")


# Why a job array is refused, in every message that refuses one.
_WHY_NO_ARRAYS = (
    "A task follows one job: it would follow one element and could call the task a success on that "
    "element's word while others failed, so an array asked for in the script or options is refused. "
    "Map the task instead (.expand()): on Slurm its instances go to the cluster as one array, each "
    "instance following its own element (docs/arrays.rst); elsewhere one job per instance."
)


class SshBatchJobOperator(GitPinnedPartial, LayeredEnvOperator):
    """Base of the operators that submit a batch job over SSH and wait for it (see subclasses)."""

    scheduler: ClassVar[str] = ""
    reserved_options: ClassVar[tuple[str, ...]] = ()
    # Options that turn one submission into many jobs (arrays), and env names the submission reads.
    multi_job_options: ClassVar[tuple[str, ...]] = ()
    env_rules: ClassVar[tuple[EnvRule, ...]] = ()
    # The directive lines the scheduler's submission reads in a script (see directives.py).
    directive_families: ClassVar[tuple[str, ...]] = SLURM_FAMILIES
    trigger_class: ClassVar[type[SshJobTrigger]]
    template_fields: Sequence[str] = (
        "command",
        "script",
        "env",
        "setup",
        "job_name",
        "working_dir",
        "conn_id",
        *RESOURCE_FIELDS,
        *ENV_RULE_FIELDS,
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"command": "bash", "script": "bash", "env": "json"}

    def __init__(
        self,
        *,
        conn_id: str,
        command: str | None = None,
        script: str | None = None,
        partition: str | None = None,
        account: str | None = None,
        cpus: int | None = None,
        memory: int | str | None = None,
        time_limit: timedelta | str | int | None = None,
        gpus: int | None = None,
        gres: str | None = None,
        nodes: int | None = None,
        job_name: str | None = None,
        working_dir: str | None = None,
        extra_options: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        setup: Sequence[str] = (),
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
        if (command is None) == (script is None):
            raise JobSpecError(f"{self.task_id}: give exactly one of command= or script=")
        if poll_interval is not None and poll_interval <= 0:
            raise JobSpecError(f"{self.task_id}: poll_interval={poll_interval!r} must be more than zero")
        self.conn_id = conn_id
        self.command = command
        self.script = script
        self.partition = partition
        self.account = account
        self.cpus = cpus
        self.memory = memory
        self.time_limit = time_limit
        self.gpus = gpus
        self.gres = gres
        self.nodes = nodes
        # Checked now so a bad value fails the DAG at parse time, not in the triggerer hours later;
        # a templated value is checked once rendered (check_rendered).
        self.job_resources = self._checked_resources(rendered=False)
        self.extra_options = tuple(self._check_option(option) for option in extra_options)
        self.env = dict(env or {})
        check_env_names(tuple(self.env))
        self.setup = list(setup)
        self.job_name = job_name
        self.working_dir = working_dir
        self.login_shell = login_shell
        self.poll_interval = poll_interval
        self.log_tail_lines = log_tail_lines
        self._job_id: str | None = None
        self._cursor_path: str | None = None
        self._environment: JobEnvironment | None = None

    # -- what a subclass provides ------------------------------------------------------------------

    def cluster(self) -> ClusterSettings:
        raise NotImplementedError

    def dialect(self, cluster: ClusterSettings) -> SchedulerDialect:
        raise NotImplementedError

    def render(self, spec: JobSpec, cluster: ClusterSettings) -> str:
        raise NotImplementedError

    async def submit(
        self, transport: SshTransport, spec: JobSpec, batch_script: str, key: JobKey, cluster: ClusterSettings
    ) -> Submitted:
        raise NotImplementedError

    def trigger(
        self, cluster: ClusterSettings, job: Submitted, interval_s: float, deadline: float | None
    ) -> BaseTrigger:
        """The trigger the deferred task waits on: ``trigger_class`` with the job's coordinates and
        whatever else the scheduler's trigger declares (:meth:`trigger_arguments`)."""
        assert job.job_id is not None
        return self.trigger_class(
            conn_id=cluster.conn_id,
            job_id=job.job_id,
            log_path=job.log_path,
            cursor_path=job.cursor_path,
            poll_interval=interval_s,
            deadline=deadline,
            **self.trigger_arguments(cluster),
        )

    def trigger_arguments(self, cluster: ClusterSettings) -> dict[str, Any]:
        """What the scheduler's trigger takes besides the job's coordinates (see subclasses)."""
        return {}

    def defer_as_array_element(
        self, context: Context, cluster: ClusterSettings, spec: JobSpec, batch_script: str, key: JobKey
    ) -> None:
        """Defer a mapped task instance to be submitted with its siblings as one job array, where
        the scheduler's operator does that (see ``SlurmSubmitOperator``); else return."""

    def poll_interval_s(self, cluster: ClusterSettings) -> float:
        """Seconds between status polls: the task's, else the connection's, else ``[hpc]``'s."""
        return self.poll_interval or cluster.poll_interval_s or default_poll_interval_s()

    def resume_from(self, payload: Mapping[str, Any]) -> None:
        """Take back what ``execute`` learned (a fresh operator instance runs ``execute_complete``)."""

    def script_for_log(self, batch_script: str) -> str:
        """The batch script as the task log shows it once submitted (a subclass may shorten it)."""
        return batch_script

    # -- checking and building -------------------------------------------------------------------

    def _check_option(self, option: str) -> str:
        """An extra option becomes a directive line, which the scheduler reads as a whole: every
        option on it counts (``"-N 1 --array=1-3"``), in every spelling it accepts."""
        check_single_line(option, "extra_options")
        if not option.startswith("-"):
            raise JobSpecError(f"extra_options: {option!r} is not a {self.scheduler} option (it must start with '-')")
        for use in self.options_in(option):
            if use.name in self.multi_job_options:
                raise JobSpecError(f"extra_options: {option!r} asks for a job array ({use.name}). {_WHY_NO_ARRAYS}")
            if use.name in self.reserved_options:
                raise JobSpecError(
                    f"extra_options: {use.name} is set by the operator (it streams the job's output and "
                    f"finds the job again by its key); remove {option!r}"
                )
        return option

    def _checked_resources(self, *, rendered: bool) -> Resources:
        """The resource arguments, checked: literal ones at parse time, all of them once rendered."""
        text = rendered_text if rendered else unless_templated
        number = rendered_number if rendered else unless_templated
        return build_resources(
            partition=text(self.partition),
            account=text(self.account),
            nodes=number(self.nodes),
            cpus=number(self.cpus),
            memory=text(self.memory),
            time_limit=number(self.time_limit),
            gpus=number(self.gpus),
            gres=text(self.gres),
        )

    def check_rendered(self) -> None:
        if not isinstance(self.conn_id, str) or not self.conn_id.strip():
            raise JobSpecError(f"the connection id rendered to {self.conn_id!r}: it must name a connection")
        self.conn_id = self.conn_id.strip()
        self.job_resources = self._checked_resources(rendered=True)

    def options_in(self, option: str) -> list[OptionUse]:
        """The options one directive line holds, as the scheduler reads them (see subclasses)."""
        raise NotImplementedError

    def check_what_is_submitted(self) -> None:
        """At parse time: refuse env names the submission would read, and scripts that make a job
        array. Templated text is read before rendering (Jinja-only lines pass over); the rendered
        script is checked again by :meth:`checked_script` before it is submitted."""
        check_env(self.env, self.env_rules)
        setup = "".join(f"{line}\n" for line in self.setup if isinstance(line, str))
        drafts = [("command= and setup=", f"#!/bin/sh\n{setup}{self.command or ''}")]
        if isinstance(self.script, str):
            drafts.append(("script=", self.script))
        for where, text in drafts:
            self._refuse_multi_job(text, where, templated=True)

    def checked_script(self, batch_script: str) -> str:
        """At run time, after templating: the same checks on what will really be submitted."""
        check_env(self._task_env(), self.env_rules)
        self._refuse_multi_job(batch_script, "the batch script", templated=False)
        return batch_script

    def _refuse_multi_job(self, text: str, where: str, *, templated: bool) -> None:
        offending = multi_job_requests(text, templated=templated, families=self.directive_families)
        if offending:
            raise JobSpecError(
                f"{where}: the directive {offending[0]!r} asks for a job array or a heterogeneous job. "
                + _WHY_NO_ARRAYS
            )

    def _task_env(self) -> dict[str, str]:
        env = {str(name): str(value) for name, value in self.env.items()}
        check_env_names(tuple(env))
        return env

    def job_env(self) -> dict[str, str]:
        """What travels in the submission's environment: the task's env, plus the env rules'
        carriers once :meth:`with_env_rules` layered them."""
        return dict(self._environment.variables) if self._environment else self._task_env()

    def refused_rule_names(self) -> Sequence[EnvRule]:
        # The shell rules guard the submitting shell, which never sees a rule's variable (only its
        # carrier): PATH may be prepended to. What the scheduler sets in the job stays refused.
        return [rule for rule in self.env_rules if rule not in SHELL_ENV_RULES]

    def with_env_rules(self, spec: JobSpec, cluster: ClusterSettings) -> JobSpec:
        """The spec with the layered env rules (connection -> groups -> task): their value-free
        lines run before the setup lines, their values travel as the task's env does."""
        queue = getattr(self, "pbs_queue", None) or spec.resources.partition
        self._environment = self.layered_job_environment(
            conn_id=cluster.conn_id,
            extra=cluster.extra,
            facts={
                "scheduler": self.scheduler.lower(),
                "partition": spec.resources.partition,
                "queue": queue,
                "account": spec.resources.account,
            },
            env=self._task_env(),
        )
        return replace(
            spec,
            env_names=tuple(self._environment.variables),
            setup=(*self._environment.prelude, *spec.setup),
        )

    def job_spec(self, context: Context, cluster: ClusterSettings) -> JobSpec:
        for name, value in (("command", self.command), ("job_name", self.job_name)):
            if value is not None and not isinstance(value, str):
                raise JobSpecError(f"{name} must be a string, not {type(value).__name__}")
        ti = context["ti"]
        job_name = self.job_name or f"{ti.dag_id}.{ti.task_id}"
        res = self.job_resources
        resources = Resources(
            partition=res.partition or cluster.partition,
            account=res.account or cluster.account,
            nodes=res.nodes,
            cpus=res.cpus,
            memory_mb=res.memory_mb,
            time_limit=res.time_limit,
            gpus=res.gpus,
            gres=res.gres,
        )
        return JobSpec(
            command=self.command or "",
            job_name=check_single_line(job_name, "job_name"),
            resources=resources,
            env_names=tuple(self._task_env()),
            setup=tuple(check_single_line(line, "setup") for line in self.setup),
            login_shell=self.login_shell if self.login_shell is not None else cluster.login_shell,
            working_dir=self.working_dir,
            extra_directives=self.extra_options,
        )

    # -- running ---------------------------------------------------------------------------------

    def execute(self, context: Context) -> str:
        cluster = self.cluster()
        spec = self.with_env_rules(self.job_spec(context, cluster), cluster)
        # git= pins the commit and makes its checkout on the cluster (docs/git_pinned.rst).
        working_dir = pinned_working_dir(self, context, cluster.target, cluster.log_dir, spec.working_dir)
        spec = replace(spec, working_dir=working_dir)
        batch_script = self.render(spec, cluster)
        key = self.job_key(context)
        self.defer_as_array_element(context, cluster, spec, batch_script, key)
        job = self._submit_once(spec, batch_script, key, cluster)
        while job.job_id is None:
            self.log.info(
                "%s already runs %s jobs of this provider (max_concurrent_jobs=%s); trying again in %s",
                cluster.conn_id,
                job.busy_jobs,
                cluster.max_concurrent_jobs,
                BUSY_RETRY_DELAY,
            )
            if self.deferrable:  # wait in the triggerer, holding no worker slot
                from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

                self.defer(trigger=TimeDeltaTrigger(BUSY_RETRY_DELAY), method_name="submit_again")
            time.sleep(BUSY_RETRY_DELAY.total_seconds())
            job = self._submit_once(spec, batch_script, key, cluster)
        job_id = job.job_id
        self._job_id, self._cursor_path = job_id, job.cursor_path
        if job.adopted and job.ended:
            self.log.warning(
                "Adopted %s job %s on %s: an earlier try of this task submitted it and it already ended (%s) "
                "while nothing watched it. It is not run again: its outcome decides this try, and its output "
                "follows. If it failed, the next retry submits a new job.",
                self.scheduler,
                job_id,
                cluster.conn_id,
                job.state,
            )
        elif job.adopted:
            self.log.info(
                "Adopted %s job %s on %s: an earlier try of this task submitted it and it is still %s",
                self.scheduler,
                job_id,
                cluster.conn_id,
                job.state,
            )
        else:
            state = f" ({job.state})" if job.state else ""
            self.log.info("Submitted %s job %s on %s%s", self.scheduler, job_id, cluster.conn_id, state)
            self.log.info("Batch script:\n%s", self.script_for_log(batch_script))
        self.push_xcom(context, f"{self.scheduler.lower()}_job_id", job_id)

        interval = self.poll_interval_s(cluster)
        if self.deferrable:
            self.defer(
                trigger=self.trigger(cluster, job, interval, self.trigger_deadline()), method_name="execute_complete"
            )
        watched = WatchedJob(job_id=job_id, log_path=job.log_path, cursor_path=job.cursor_path)
        # On the worker, Airflow's own execution_timeout applies (and calls on_kill, which cancels).
        result = asyncio.run(
            watch_job(cluster.target, self.dialect(cluster), watched, self.log, interval_s=interval, deadline=None)
        )
        return self.execute_complete(
            context, {**result.to_dict(), "conn_id": cluster.conn_id, "log_path": job.log_path}
        )

    def _submit_once(self, spec: JobSpec, batch_script: str, key: JobKey, cluster: ClusterSettings) -> Submitted:
        # Over the process's one connection to the cluster: what came before (a Python task's
        # version probe) and what comes after (results, last lines) reuse it.
        return on_cluster(cluster.target, lambda transport: self.submit(transport, spec, batch_script, key, cluster))

    def submit_again(self, context: Context, event: Any = None) -> str:
        return self.execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | TriggerEvent) -> str:
        payload = event.payload if isinstance(event, TriggerEvent) else event
        self.resume_from(payload)
        outcome = WatchOutcome.from_dict(payload)
        self._job_id = outcome.job_id
        self._cursor_path = payload.get("cursor_path") or self._cursor_path
        if payload.get("array_element"):  # its id was only known in the triggerer
            self.push_xcom(context, f"{self.scheduler.lower()}_job_id", outcome.job_id)
        return self.finish(outcome, payload, where=str(payload.get("conn_id", self.conn_id)))

    @property
    def job_noun(self) -> str:
        return f"{self.scheduler} job"

    def failure_tail(self, payload: Mapping[str, Any]) -> str:
        return self._tail(str(payload.get("log_path", "")))

    def _tail(self, log_path: str) -> str:
        if not log_path or self.log_tail_lines <= 0:
            return ""
        count = self.log_tail_lines
        try:
            return on_cluster(self.cluster().target, lambda transport: read_log_tail(transport, log_path, count))
        except Exception as error:  # the failure itself matters more than its last lines
            self.log.warning("could not read the job's last lines: %s", error)
            return ""

    def stop_job(self, job_id: str, cause: StopCause) -> str:
        cluster = self.cluster()
        dialect = self.dialect(cluster)
        # Claimed as it is cancelled: a job stopped on purpose is never adopted by a retry. Over the
        # worker process's one connection to the cluster, not a new one.
        claims = () if self._cursor_path is None else (self._cursor_path,)
        on_cluster(cluster.target, lambda transport: cancel_jobs(transport, dialect, [job_id], claims=claims))
        return f"Cancelled {self.scheduler} job {job_id} on {cluster.conn_id}"

    def on_kill(self) -> None:
        """Worker-side kill (non-deferrable path, or the worker's own timeout): cancel our job."""
        if self._job_id is not None:
            self.stop_from_a_fresh_thread(self._job_id, StopCause.KILLED)
