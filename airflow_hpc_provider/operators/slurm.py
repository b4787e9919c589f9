"""``SlurmSubmitOperator``: run a command or script as a Slurm job, watched without holding a worker slot."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from airflow.sdk import Context
from airflow.triggers.base import TriggerEvent

from airflow_hpc_provider.dialects import directives, slurm, slurm_status
from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.dialects.slurm_resubmit import SignalBeforeTimeout
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.hooks.slurm import ClusterDefaults, SlurmHook, submit_job
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobStatus
from airflow_hpc_provider.operators.arrays import array_element_trigger, check_array_arguments
from airflow_hpc_provider.operators.base import StopCause
from airflow_hpc_provider.operators.ssh_batch import SshBatchJobOperator
from airflow_hpc_provider.operators.ssh_cluster import ClusterSettings, Submitted
from airflow_hpc_provider.triggers.slurm import SlurmJobTrigger
from airflow_hpc_provider.triggers.slurm_array import SlurmArrayElementTrigger


class SlurmSubmitOperator(SshBatchJobOperator):
    """Submit a Slurm batch job over SSH and wait for it, deferred by default.

    Give ``command`` (lines run by bash) or ``script`` (a whole batch script, which may carry its
    own shebang and ``#SBATCH`` lines). Resources left out fall back to the connection's defaults
    (``partition``, ``account``) and then to the cluster's.

    The connection id and the resource arguments are templated: a literal value is checked when
    the DAG is parsed, a Jinja one right after it is rendered, with the same messages.

    :param slurm_conn_id: Airflow connection of type ``slurm`` (or ``ssh``); templated.
    :param command: shell command(s) to run; templated.
    :param script: a whole batch script instead of ``command``, or the path of one (ending in
        ``.sbatch``, ``.sh``, ``.bash``) on the DAG's template search path; templated.
    :param partition: partition name(s), comma-separated; templated.
    :param account: account to charge; templated.
    :param cpus: CPUs per task (``--cpus-per-task``); templated.
    :param memory: memory per node: MiB as an int, or ``"4G"``, ``"512M"``; templated.
    :param time_limit: a timedelta, minutes as an int, or a Slurm string (``"1-12:00:00"``); templated.
    :param gpus: number of GPUs for the job (``--gpus``); templated.
    :param gres: generic resources (``--gres``), e.g. ``"gpu:a100:2"``; templated.
    :param nodes: number of nodes; templated.
    :param job_name: the Slurm job name; default ``<dag_id>.<task_id>``; templated.
    :param working_dir: the job's working directory (``--chdir``); templated.
    :param extra_options: more ``#SBATCH`` options, e.g. ``["--qos=high", "--constraint=avx2"]``.
    :param env: environment variables for the job; templated. Values travel through sbatch's
        environment, never into the script or a command line.
    :param setup: lines run before the command, e.g. ``["module load python/3.11"]``; templated.
    :param login_shell: start the job's script as a login shell (``#!/bin/bash -l``); default: the
        connection's ``login_shell``, which also governs the shell the submission runs in.
    :param poll_interval: seconds between status polls (one query per cluster, shared by all tasks);
        default: the connection's ``poll_interval``, else ``[hpc] default_poll_interval`` (10).
    :param deferrable: wait in the triggerer or poll on the worker; default: ``[hpc]
        default_deferrable`` (True), see :func:`airflow_hpc_provider.config.default_deferrable`.
    :param log_tail_lines: lines of the job's output quoted in the error when it fails.
    :param skip_on_exit_code: an exit code, or a list of them, that marks the task skipped instead
        of failed (or succeeded, for 0) when the job exits with it.
    :param signal_before_timeout: ``"<signal>@<seconds>"`` (e.g. ``"USR1@300"``): that long before
        the time limit the ``on_signal`` lines run and the command gets the signal (its own handler
        may checkpoint; without one it ends).
    :param on_signal: shell lines run in the job when that signal comes, before the command gets
        it, e.g. ``["touch checkpoint.request"]``; templated.
    :param resubmit_on_timeout: after the signal and the command's end, requeue the job (same job id,
        output appended to the same task log under a run marker) up to this many times; needs
        ``signal_before_timeout`` and a ``time_limit``. The task ends with the last run's result.
    :param array: how a mapped task (``.expand()``) is submitted. ``None`` (default): the mapped
        task instances that defer together go to the cluster as one job array per group of
        compatible ones (same connection, script, resources and env; only the command differs),
        each instance still its own job ``<array>_<index>`` with its own log, state, retry and
        cancel; ``False``: one job per instance; ``True``: as ``None``, but fail the task when it
        cannot be an element (see docs/arrays.rst).
    :param array_throttle: at most this many elements of one array run at once (``%N``).
    :param array_window: the longest an instance waits in the triggerer for its mapped siblings
        before it is submitted; default ``[hpc] array_window`` (10 s). It ends early once every
        instance is waiting, and a full chunk of ``MaxArraySize`` goes at once.
    """

    scheduler = "Slurm"
    trigger_class = SlurmJobTrigger
    template_fields: Sequence[str] = (*SshBatchJobOperator.template_fields, "signal_before_timeout", "on_signal")
    reserved_options = slurm.RESERVED_OPTIONS
    multi_job_options = directives.SLURM_ARRAY
    env_rules = directives.SHELL_ENV_RULES + directives.SLURM_ENV_RULES
    ui_color = "#e8f0fe"
    # Mapped task instances may run as elements of one array (False where each job is prepared
    # on the worker, as a Python function's is).
    supports_arrays: ClassVar[bool] = True
    array_arguments_check = staticmethod(check_array_arguments)

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
        deferrable: bool | None = None,
        log_tail_lines: int = 20,
        skip_on_exit_code: int | Iterable[int] | None = None,
        signal_before_timeout: str | None = None,
        on_signal: Sequence[str] = (),
        resubmit_on_timeout: int = 0,
        array: bool | None = None,
        array_throttle: int | None = None,
        array_window: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            conn_id=slurm_conn_id,
            command=command,
            script=script,
            partition=partition,
            account=account,
            cpus=cpus,
            memory=memory,
            time_limit=time_limit,
            gpus=gpus,
            gres=gres,
            nodes=nodes,
            job_name=job_name,
            working_dir=working_dir,
            extra_options=extra_options,
            env=env,
            setup=setup,
            login_shell=login_shell,
            poll_interval=poll_interval,
            deferrable=deferrable,
            log_tail_lines=log_tail_lines,
            skip_on_exit_code=skip_on_exit_code,
            **kwargs,
        )
        self.check_what_is_submitted()
        self.signal_before_timeout = signal_before_timeout
        self.on_signal = on_signal
        self.resubmit_on_timeout = resubmit_on_timeout
        check_array_arguments(self.task_id, array, array_throttle, array_window)
        self.array = array
        self.array_throttle = array_throttle
        self.array_window = array_window
        if "{{" not in f"{signal_before_timeout}{on_signal}":  # a Jinja value is checked once rendered
            self.near_limit(rendered=False)

    def near_limit(self, *, rendered: bool = True) -> SignalBeforeTimeout | None:
        """The job's behaviour near its time limit, checked (at parse time when literal)."""
        if self.signal_before_timeout is None:
            if self.resubmit_on_timeout or self.on_signal:
                raise JobSpecError(
                    f"{self.task_id}: resubmit_on_timeout and on_signal need signal_before_timeout "
                    "(e.g. 'USR1@300'): the job must hear of its limit before it is reached"
                )
            return None
        if rendered and self.resubmit_on_timeout and self.job_resources.time_limit is None:
            raise JobSpecError(f"{self.task_id}: resubmit_on_timeout needs a time_limit to resubmit before")
        return SignalBeforeTimeout.parse(
            self.signal_before_timeout, resubmits=self.resubmit_on_timeout, on_signal=self.on_signal
        )

    @property
    def slurm_conn_id(self) -> str:
        """The connection id, as rendered (templated as ``conn_id``)."""
        return self.conn_id

    def options_in(self, option: str) -> list[directives.OptionUse]:
        long_names = [name for name in (*self.reserved_options, *self.multi_job_options) if name.startswith("--")]
        return directives.slurm_options(option, long_names)

    def cluster(self) -> ClusterSettings:
        hook = SlurmHook(self.slurm_conn_id)
        conn = hook.get_conn()
        defaults = ClusterDefaults.from_extra(conn.conn_id, conn.extra_dejson)
        return ClusterSettings(
            conn_id=self.slurm_conn_id,
            target=SshTarget.from_connection(conn),
            partition=defaults.partition,
            account=defaults.account,
            log_dir=defaults.log_dir,
            poll_interval_s=defaults.poll_interval_s,
            login_shell=hook.login_shell_default(conn),
            max_concurrent_jobs=defaults.max_concurrent_jobs,
            extra=conn.extra_dejson,
        )

    def dialect(self, cluster: ClusterSettings) -> SlurmDialect:
        return SlurmDialect()

    def render(self, spec: JobSpec, cluster: ClusterSettings) -> str:
        return self.checked_script(slurm.render_script(spec, script=self.script, near_limit=self.near_limit()))

    async def submit(
        self, transport: SshTransport, spec: JobSpec, batch_script: str, key: JobKey, cluster: ClusterSettings
    ) -> Submitted:
        outcome = await submit_job(
            transport,
            spec,
            batch_script,
            key=key,
            log_dir=cluster.log_dir,
            env=self.job_env(),
            max_concurrent_jobs=cluster.max_concurrent_jobs,
        )
        if outcome.job_id is None:
            return Submitted(job_id=None, adopted=False, state=None, busy_jobs=outcome.busy_jobs)
        return Submitted(
            job_id=outcome.job_id,
            adopted=outcome.adopted,
            state=outcome.state,
            log_path=slurm.log_path(cluster.log_dir, key, outcome.job_id),
            cursor_path=slurm.cursor_path(cluster.log_dir, key, outcome.job_id),
            ended=outcome.ended,
        )

    def defer_as_array_element(
        self, context: Context, cluster: ClusterSettings, spec: JobSpec, batch_script: str, key: JobKey
    ) -> None:
        """A mapped task instance defers at once: the triggerer submits it with its siblings as one
        array (docs/arrays.rst); this worker touches no cluster."""
        trigger = array_element_trigger(self, context, cluster, spec, batch_script, key, SlurmArrayElementTrigger)
        if trigger is not None:
            self.defer(trigger=trigger, method_name="execute_complete")

    def why_no_array_element(self) -> str | None:
        if self.signal_before_timeout is not None:
            return "signal_before_timeout is set (its requeue is per job)"
        return None

    def execute_complete(self, context: Context, event: dict[str, Any] | TriggerEvent) -> str:
        payload = event.payload if isinstance(event, TriggerEvent) else event
        status = payload.get("status")
        if status is not None and slurm_status.is_multi_job(JobStatus.from_dict(status)):
            # It became many jobs, none of which this task can follow: cancel what it started.
            self.log.error("Slurm job %s is a job array: cancelling it", payload.get("job_id"))
            self.stop_from_a_fresh_thread(str(payload["job_id"]), StopCause.REFUSED)
        return super().execute_complete(context, event)
