"""``SlurmSubmitOperator``: run a command or script as a Slurm job, watched without holding a worker slot."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowTaskTimeout
from airflow.triggers.base import TriggerEvent

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.errors import JobFailedError, JobSpecError, RemoteCommandError
from airflow_hpc_provider.hooks.slurm import ClusterDefaults, SlurmHook, cancel_jobs, read_tail, submit_job
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobStatus, WatchedJob, format_duration
from airflow_hpc_provider.resources import (
    build_resources,
    check_env_names,
    check_single_line,
)
from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
from airflow_hpc_provider.watch import WatchOutcome, watch_job

BUSY_RETRY_DELAY = timedelta(seconds=60)
DEFAULT_POLL_INTERVAL_S = 10.0


class SlurmSubmitOperator(BaseOperator):
    """Submit a Slurm batch job over SSH and wait for it, deferred by default.

    Give ``command`` (lines run by bash) or ``script`` (a whole batch script, which may carry its
    own shebang and ``#SBATCH`` lines). Resources left out fall back to the connection's defaults
    (``partition``, ``account``) and then to the cluster's.

    :param slurm_conn_id: Airflow connection of type ``slurm`` (or ``ssh``).
    :param command: shell command(s) to run; templated.
    :param script: a whole batch script instead of ``command``; templated.
    :param partition: partition name(s), comma-separated.
    :param account: account to charge.
    :param cpus: CPUs per task (``--cpus-per-task``).
    :param memory: memory per node: MiB as an int, or ``"4G"``, ``"512M"``.
    :param time_limit: a timedelta, minutes as an int, or a Slurm string (``"1-12:00:00"``).
    :param gpus: number of GPUs (``--gpus``).
    :param gres: generic resources (``--gres``), e.g. ``"gpu:a100:2"``.
    :param nodes: number of nodes.
    :param job_name: the Slurm job name; default ``<dag_id>.<task_id>``; templated.
    :param working_dir: the job's working directory (``--chdir``); templated.
    :param extra_options: more ``#SBATCH`` options, e.g. ``["--qos=high", "--constraint=avx2"]``.
    :param env: environment variables for the job; templated. Values travel through sbatch's
        environment, never into the script or a command line.
    :param setup: lines run before the command, e.g. ``["module load python/3.11"]``; templated.
    :param login_shell: start the job's script as a login shell (``#!/bin/bash -l``); default: the
        connection's ``login_shell``, which also governs the shell the submission runs in.
    :param poll_interval: seconds between status polls (one query per cluster, shared by all tasks);
        default: the connection's ``poll_interval``, else 10.
    :param deferrable: wait in the triggerer (default) or poll on the worker.
    :param log_tail_lines: lines of the job's output quoted in the error when it fails.
    """

    template_fields: Sequence[str] = ("command", "script", "env", "setup", "job_name", "working_dir")
    template_fields_renderers: ClassVar[dict[str, str]] = {"command": "bash", "script": "bash", "env": "json"}
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        slurm_conn_id: str = SlurmHook.default_conn_name,
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
        deferrable: bool = True,
        log_tail_lines: int = 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (command is None) == (script is None):
            raise JobSpecError(f"{self.task_id}: give exactly one of command= or script=")
        if poll_interval is not None and poll_interval <= 0:
            raise JobSpecError(f"{self.task_id}: poll_interval={poll_interval!r} must be more than zero")
        self.slurm_conn_id = slurm_conn_id
        self.command = command
        self.script = script
        # Checked now so a bad value fails the DAG at parse time, not in the triggerer hours later.
        self.job_resources = build_resources(
            partition=partition,
            account=account,
            nodes=nodes,
            cpus=cpus,
            memory=memory,
            time_limit=time_limit,
            gpus=gpus,
            gres=gres,
        )
        self.extra_options = tuple(self._check_option(option) for option in extra_options)
        self.env = dict(env or {})
        check_env_names(tuple(self.env))
        self.setup = list(setup)
        self.job_name = job_name
        self.working_dir = working_dir
        self.login_shell = login_shell
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self.log_tail_lines = log_tail_lines
        self._job_id: str | None = None
        self._target: SshTarget | None = None

    @staticmethod
    def _check_option(option: str) -> str:
        check_single_line(option, "extra_options")
        if not option.startswith("-"):
            raise JobSpecError(f"extra_options: {option!r} is not an sbatch option (it must start with '-')")
        name = option.split("=", 1)[0].split(" ", 1)[0]
        if name in slurm.RESERVED_OPTIONS:
            raise JobSpecError(
                f"extra_options: {name} is set by the operator (it streams the job's output and "
                "finds the job again by its comment); remove it"
            )
        return option

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        # Jinja drops a template's final newline by default; an env value or a script must arrive
        # exactly as written, so render with it kept (an overlay: the DAG's own env is untouched).
        env = jinja_env or self.get_template_env(self.dag if self.has_dag() else None)
        super().render_template_fields(context, env.overlay(keep_trailing_newline=True))

    # -- building the job --------------------------------------------------------------------------

    def _spec(self, context: Context, defaults: ClusterDefaults, login_shell: bool) -> JobSpec:
        for name, value in (("command", self.command), ("job_name", self.job_name)):
            if value is not None and not isinstance(value, str):
                raise JobSpecError(f"{name} must be a string, not {type(value).__name__}")
        env = {str(name): str(value) for name, value in self.env.items()}
        check_env_names(tuple(env))
        ti = context["ti"]
        job_name = self.job_name or f"{ti.dag_id}.{ti.task_id}"
        res = self.job_resources
        resources = build_resources(
            partition=res.partition or defaults.partition,
            account=res.account or defaults.account,
            nodes=res.nodes,
            cpus=res.cpus,
            memory=res.memory_mb,
            time_limit=res.time_limit,
            gpus=res.gpus,
            gres=res.gres,
        )
        return JobSpec(
            command=self.command or "",
            job_name=check_single_line(job_name, "job_name"),
            resources=resources,
            env_names=tuple(env),
            setup=tuple(check_single_line(line, "setup") for line in self.setup),
            login_shell=login_shell,
            working_dir=self.working_dir,
            extra_directives=self.extra_options,
        )

    # -- running -----------------------------------------------------------------------------------

    def execute(self, context: Context) -> str:
        hook = SlurmHook(self.slurm_conn_id)
        conn = hook.get_conn()
        target = SshTarget.from_connection(conn)
        defaults = ClusterDefaults.from_extra(conn.conn_id, conn.extra_dejson)
        login_shell = self.login_shell if self.login_shell is not None else hook.login_shell_default(conn)
        spec = self._spec(context, defaults, login_shell)
        batch_script = slurm.render_script(spec, script=self.script)
        ti = context["ti"]
        key = JobKey.for_task_instance(
            ti.dag_id, ti.task_id, ti.run_id, -1 if ti.map_index is None else ti.map_index, ti.try_number
        )
        env = {str(name): str(value) for name, value in self.env.items()}

        outcome = asyncio.run(self._submit(target, spec, batch_script, key, defaults, env))
        while outcome.job_id is None:
            self.log.info(
                "%s already runs %s jobs of this provider (max_concurrent_jobs=%s); trying again in %s",
                self.slurm_conn_id,
                outcome.busy_jobs,
                defaults.max_concurrent_jobs,
                BUSY_RETRY_DELAY,
            )
            if self.deferrable:  # wait in the triggerer, holding no worker slot
                from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

                self.defer(trigger=TimeDeltaTrigger(BUSY_RETRY_DELAY), method_name="_submit_again")
            time.sleep(BUSY_RETRY_DELAY.total_seconds())
            outcome = asyncio.run(self._submit(target, spec, batch_script, key, defaults, env))
        job_id = outcome.job_id
        self._job_id, self._target = job_id, target
        if outcome.adopted:
            self.log.info(
                "Adopted Slurm job %s on %s: an earlier try of this task submitted it and it is still %s",
                job_id,
                self.slurm_conn_id,
                outcome.state,
            )
        else:
            self.log.info("Submitted Slurm job %s on %s (%s)", job_id, self.slurm_conn_id, outcome.state)
            self.log.info("Batch script:\n%s", batch_script)
        ti.xcom_push(key="slurm_job_id", value=job_id)

        log_path = slurm.log_path(defaults.log_dir, key, job_id)
        cursor_path = slurm.cursor_path(defaults.log_dir, key, job_id)
        interval = self.poll_interval or defaults.poll_interval_s or DEFAULT_POLL_INTERVAL_S
        deadline = time.time() + self.execution_timeout.total_seconds() if self.execution_timeout else None
        if self.deferrable:
            self.defer(
                trigger=SlurmJobTrigger(
                    slurm_conn_id=self.slurm_conn_id,
                    job_id=job_id,
                    log_path=log_path,
                    cursor_path=cursor_path,
                    poll_interval=interval,
                    deadline=deadline,
                ),
                method_name="execute_complete",
            )
        watched = WatchedJob(job_id=job_id, log_path=log_path, cursor_path=cursor_path)
        # On the worker, Airflow's own execution_timeout applies (and calls on_kill, which cancels).
        result = asyncio.run(watch_job(target, SlurmDialect(), watched, self.log, interval_s=interval, deadline=None))
        return self.execute_complete(
            context, {**result.to_dict(), "slurm_conn_id": self.slurm_conn_id, "log_path": log_path}
        )

    async def _submit(
        self,
        target: SshTarget,
        spec: JobSpec,
        batch_script: str,
        key: JobKey,
        defaults: ClusterDefaults,
        env: dict[str, str],
    ) -> slurm.SubmitOutcome:
        transport = SshTransport(target)
        try:
            return await submit_job(
                transport,
                spec,
                batch_script,
                key=key,
                log_dir=defaults.log_dir,
                env=env,
                max_concurrent_jobs=defaults.max_concurrent_jobs,
            )
        finally:
            await transport.close()

    def _submit_again(self, context: Context, event: Any = None) -> str:
        return self.execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | TriggerEvent) -> str:
        payload = event.payload if isinstance(event, TriggerEvent) else event
        outcome = WatchOutcome.from_dict(payload)
        conn_id = payload.get("slurm_conn_id", self.slurm_conn_id)
        self._job_id = outcome.job_id
        if outcome.kind == "timeout":
            self.log.error("Slurm job %s passed the task's time limit: cancelling it", outcome.job_id)
            self._cancel_now(conn_id, outcome.job_id)
            raise AirflowTaskTimeout(f"Slurm job {outcome.job_id} on {conn_id} was cancelled: {outcome.message}")
        if outcome.kind == "error" or outcome.status is None:
            raise JobFailedError(
                f"lost track of Slurm job {outcome.job_id} on {conn_id}: {outcome.message} "
                "(the job was not cancelled and may still be running)",
                None,
            )
        status = outcome.status
        self.log.info("%s", self._summary(status))
        if status.state.is_success:
            return outcome.job_id
        tail = self._tail(conn_id, str(payload.get("log_path", "")))
        message = self._summary(status)
        if tail.strip():
            message += f"\nlast lines of the job's output:\n{tail.rstrip()}"
        raise JobFailedError(message, status)

    @staticmethod
    def _summary(status: JobStatus) -> str:
        """``Slurm job 1234 ended OUT_OF_MEMORY (exit 0:125) after 00:00:12``, plus what is known."""
        exit_text = "unknown" if status.exit_code is None else f"{status.exit_code}:{status.signal or 0}"
        text = f"Slurm job {status.job_id} ended {status.native_state} (exit {exit_text})"
        if status.elapsed is not None:
            text += f" after {format_duration(status.elapsed)}"
        if status.reason and status.reason not in ("None", "(null)"):
            text += f", reason: {status.reason}"
        if status.nodes:
            text += f", on {status.nodes}"
        if status.max_rss_mb:
            text += f", peak memory {status.max_rss_mb:.1f} MiB"
        return text

    def _tail(self, conn_id: str, log_path: str) -> str:
        if not log_path or self.log_tail_lines <= 0:
            return ""

        async def fetch() -> str:
            transport = SshTransport(SlurmHook(conn_id).get_target())
            try:
                return await read_tail(transport, log_path, self.log_tail_lines)
            finally:
                await transport.close()

        try:
            return asyncio.run(fetch())
        except Exception as error:  # the failure itself matters more than its last lines
            self.log.warning("could not read the job's last lines: %s", error)
            return ""

    def _cancel_now(self, conn_id: str, job_id: str) -> None:
        async def cancel() -> None:
            transport = SshTransport(SlurmHook(conn_id).get_target())
            try:
                await cancel_jobs(transport, [job_id])
            finally:
                await transport.close()

        # on_kill may run while this thread's event loop is busy watching: cancel from a fresh thread.
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(cancel())
            except BaseException as error:
                errors.append(error)

        worker = threading.Thread(target=run, name="slurm-cancel")
        worker.start()
        worker.join(timeout=60)
        if errors:
            if isinstance(errors[0], RemoteCommandError):
                self.log.error("%s", errors[0])
            else:
                raise errors[0]
        else:
            self.log.info("Cancelled Slurm job %s on %s", job_id, conn_id)

    def on_kill(self) -> None:
        """Worker-side kill (non-deferrable path, or the worker's own timeout): cancel our job."""
        if self._job_id is not None:
            self._cancel_now(self.slurm_conn_id, self._job_id)
