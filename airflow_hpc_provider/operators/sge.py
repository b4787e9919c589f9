"""``SgeOperator``: run a command or script as a Grid Engine job over SSH, and the trigger it defers to.

Everything but what Grid Engine says differently is shared with the Slurm and PBS operators
(:class:`~airflow_hpc_provider.operators.ssh_batch.SshBatchJobOperator`): the arguments, the
submit -> defer -> complete flow, adoption on retry, the outcome summary and cancellation. The
scheduler itself is :mod:`airflow_hpc_provider.dialects.sge`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_hpc_provider.dialects import directives, sge
from airflow_hpc_provider.dialects.sge import SgeDialect
from airflow_hpc_provider.hooks.sge import SgeClusterDefaults, SgeHook, submit_job
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec
from airflow_hpc_provider.operators.arrays import array_element_trigger, check_array_arguments
from airflow_hpc_provider.operators.base import rendered_text, unless_templated
from airflow_hpc_provider.operators.ssh_batch import SshBatchJobOperator
from airflow_hpc_provider.operators.ssh_cluster import ClusterSettings, Submitted
from airflow_hpc_provider.resources import check_name

# SgeJobTrigger is importable from here too: triggers deferred before it moved are stored by this path.
from airflow_hpc_provider.triggers.sge import SgeJobTrigger
from airflow_hpc_provider.triggers.sge_array import SgeArrayElementTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["SgeJobTrigger", "SgeOperator"]


class SgeOperator(SshBatchJobOperator):
    """Submit a Grid Engine (Son of Grid Engine, SGE 6.2 family) job over SSH and wait for it,
    deferred by default.

    Takes every argument of :class:`~airflow_hpc_provider.operators.ssh_batch.SshBatchJobOperator`
    (``command`` or ``script``, ``cpus``, ``memory``, ``time_limit``, ``env``, ``setup``,
    ``extra_options``, ``poll_interval``, ``deferrable``, ``skip_on_exit_code``, ...) as keywords,
    read the Grid Engine way: ``cpus`` are slots (``-pe <parallel environment> N``), ``memory`` is
    for the whole job (``-l h_vmem``, divided among the slots), ``time_limit`` is ``-l h_rt``,
    ``account`` is the project (``-P``), ``extra_options`` are more ``#$`` lines. Grid Engine has
    no standard GPU request and places slots, not nodes: ``gpus``, ``gres`` and ``nodes`` > 1 are
    refused (name the site's resource in ``extra_options`` instead).

    :param sge_conn_id: Airflow connection of type ``sge`` (or ``ssh``); templated.
    :param sge_queue: the cluster queue (``-q``); wins over the connection's queue, which wins
        over ``partition`` (a Slurm name in a DAG shared with Slurm). (Not ``queue``: that is the
        Airflow executor queue every operator has.) Templated.
    :param parallel_environment: the site's parallel environment for more than one slot (often
        ``smp``); default: the connection's. Templated.
    :param array: how a mapped task (``.expand()``) is submitted. ``None`` (default): the mapped
        task instances that defer together go to the cluster as one job array (``qsub -t``) per
        group of compatible ones (same connection, script, resources and env; only the command and
        env values differ), each instance still its own element ``<job>.<task>`` with its own log,
        state, exit code, retry and cancel (``qdel <job> -t <task>``); ``False``: one job per
        instance; ``True``: as ``None``, but fail the task when it cannot be an element (see
        docs/arrays.rst).
    :param array_throttle: at most this many elements of one array run at once (``-tc N``).
    :param array_window: the longest an instance waits in the triggerer for its mapped siblings
        before it is submitted; default ``[hpc] array_window`` (10 s). It ends early once every
        instance is waiting, and a full chunk of ``max_aj_tasks`` goes at once.
    """

    scheduler = "SGE"
    trigger_class = SgeJobTrigger
    template_fields: Sequence[str] = (*SshBatchJobOperator.template_fields, "sge_queue", "parallel_environment")
    reserved_options = sge.RESERVED_OPTIONS
    multi_job_options = directives.SGE_ARRAY
    env_rules = directives.SHELL_ENV_RULES + directives.SGE_ENV_RULES
    directive_families = directives.SGE_FAMILIES
    ui_color = "#eef6ee"
    # Mapped task instances may run as elements of one array (not @task.sge's: see ClusterPythonJob).
    supports_arrays: ClassVar[bool] = True
    array_arguments_check = staticmethod(check_array_arguments)

    def __init__(
        self,
        *,
        sge_conn_id: str = SgeHook.default_conn_name,
        sge_queue: str | None = None,
        parallel_environment: str | None = None,
        array: bool | None = None,
        array_throttle: int | None = None,
        array_window: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=sge_conn_id, **kwargs)
        check_array_arguments(self.task_id, array, array_throttle, array_window)
        self.array = array
        self.array_throttle = array_throttle
        self.array_window = array_window
        check_name(unless_templated(sge_queue), "sge_queue")
        check_name(unless_templated(parallel_environment), "parallel_environment")
        self.sge_queue = sge_queue
        self.parallel_environment = parallel_environment
        self._connection_defaults: SgeClusterDefaults | None = None
        self._refuse_what_grid_engine_cannot_ask()
        self.check_what_is_submitted()

    def _refuse_what_grid_engine_cannot_ask(self) -> None:
        # GPUs, several nodes and reserved options fail when the DAG is parsed; slots are checked
        # once the connection's parallel environment is known.
        resources = replace(self.job_resources, cpus=None)
        sge.resource_options(JobSpec(command="", job_name="check", resources=resources, extra_directives=()))

    def options_in(self, option: str) -> list[directives.OptionUse]:
        return directives.sge_options(option)

    def check_rendered(self) -> None:
        super().check_rendered()
        self._refuse_what_grid_engine_cannot_ask()
        self.sge_queue = check_name(rendered_text(self.sge_queue), "sge_queue")
        self.parallel_environment = check_name(rendered_text(self.parallel_environment), "parallel_environment")

    def _defaults(self) -> SgeClusterDefaults:
        if self._connection_defaults is None:
            self._connection_defaults = SgeHook(self.conn_id).defaults()
        return self._connection_defaults

    def cluster(self) -> ClusterSettings:
        hook = SgeHook(self.conn_id)
        conn = hook.get_conn()
        defaults = self._defaults()
        return ClusterSettings(
            conn_id=self.conn_id,
            target=SshTarget.from_connection(conn),
            partition=None,  # the queue is decided in job_spec: sge_queue=, the connection's, partition=
            account=defaults.project,
            log_dir=defaults.log_dir,
            poll_interval_s=defaults.poll_interval_s,
            login_shell=SgeHook.login_shell_default(conn),
            extra=conn.extra_dejson,
        )

    def job_spec(self, context: Any, cluster: ClusterSettings) -> JobSpec:
        spec = super().job_spec(context, cluster)
        queue = self.sge_queue or self._defaults().queue or self.job_resources.partition
        return replace(spec, resources=replace(spec.resources, partition=queue))

    def dialect(self, cluster: ClusterSettings) -> SgeDialect:
        return SgeDialect(cluster.log_dir)

    def render(self, spec: JobSpec, cluster: ClusterSettings) -> str:
        environment = self.parallel_environment or self._defaults().parallel_environment
        return self.checked_script(sge.render_script(spec, script=self.script, parallel_environment=environment))

    async def submit(
        self, transport: SshTransport, spec: JobSpec, batch_script: str, key: JobKey, cluster: ClusterSettings
    ) -> Submitted:
        outcome = await submit_job(transport, spec, batch_script, key=key, log_dir=cluster.log_dir, env=self.job_env())
        assert outcome.job_id is not None  # the Grid Engine submission never waits for room
        return Submitted(
            job_id=outcome.job_id,
            adopted=outcome.adopted,
            state=outcome.state,
            log_path=sge.log_path(cluster.log_dir, key, outcome.job_id),
            cursor_path=sge.cursor_path(cluster.log_dir, key, outcome.job_id),
            ended=outcome.ended,
        )

    def trigger_arguments(self, cluster: ClusterSettings) -> dict[str, Any]:
        return {"log_dir": cluster.log_dir}

    def defer_as_array_element(
        self, context: Context, cluster: ClusterSettings, spec: JobSpec, batch_script: str, key: JobKey
    ) -> None:
        """A mapped task instance defers at once: the triggerer submits it with its siblings as one
        array (docs/arrays.rst); this worker touches no cluster."""
        trigger = array_element_trigger(
            self, context, cluster, spec, batch_script, key, SgeArrayElementTrigger, **self.trigger_arguments(cluster)
        )
        if trigger is not None:
            self.defer(trigger=trigger, method_name="execute_complete")

    def why_no_array_element(self) -> str | None:
        return None
