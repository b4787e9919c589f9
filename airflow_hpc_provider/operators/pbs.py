"""``PbsOperator``: run a command or script as a PBS Pro / OpenPBS or Torque job over SSH."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from airflow.sdk import Context
from airflow.triggers.base import TriggerEvent

from airflow_hpc_provider.dialects import directives, pbs, pbs_array, pbs_exits
from airflow_hpc_provider.dialects.pbs import PbsDialect
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.errors import JobFailedError, JobSpecError
from airflow_hpc_provider.hooks.pbs import PbsClusterDefaults, PbsHook, detect_flavour, submit_job
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobStatus
from airflow_hpc_provider.operators.arrays import array_element_trigger, check_array_arguments
from airflow_hpc_provider.operators.base import StopCause, rendered_text, unless_templated
from airflow_hpc_provider.operators.ssh_batch import SshBatchJobOperator
from airflow_hpc_provider.operators.ssh_cluster import ClusterSettings, Submitted
from airflow_hpc_provider.resources import check_name
from airflow_hpc_provider.triggers.pbs import PbsJobTrigger
from airflow_hpc_provider.triggers.pbs_array import PbsArrayElementTrigger


class PbsOperator(SshBatchJobOperator):
    """Submit a PBS job over SSH and wait for it, deferred by default.

    Resources are written in the flavour's own syntax (PBS Pro ``-l select=...``, Torque
    ``-l nodes=N:ppn=C``). The connection's ``flavour`` says which; left empty, the login node is
    asked once per submission.

    The connection id, ``pbs_queue`` and the resource arguments are templated: a literal value is
    checked when the DAG is parsed, a Jinja one right after it is rendered.

    :param pbs_conn_id: Airflow connection of type ``pbs`` (or ``ssh``); templated.
    :param command: shell command(s) to run; templated.
    :param script: a whole batch script instead of ``command``, or the path of one (ending in
        ``.pbs``, ``.sh``, ``.bash``) on the DAG's template search path; templated.
    :param pbs_queue: the PBS queue (``-q``); wins over everything else. (Not ``queue``: that is
        the Airflow executor queue every operator has, often set in ``default_args``.)
    :param partition: for DAGs shared with Slurm: used as the queue when the connection sets no
        default queue (a connection's queue overrides a task's Slurm partition; ``pbs_queue=``
        does not).
    :param account: account to charge (``-A``).
    :param cpus: CPUs per node (``ncpus`` / ``ppn``).
    :param memory: memory per node: MiB as an int, or ``"4G"``.
    :param walltime: a timedelta, minutes as an int, or ``"HH:MM:SS"`` (templated as ``time_limit``).
    :param gpus: GPUs per node (``ngpus`` / ``gpus``).
    :param nodes: number of nodes (chunks on PBS Pro).
    :param job_name: shown in qstat (shortened, with the task's key appended); templated.
    :param working_dir: the directory the script starts in; templated.
    :param extra_directives: more ``#PBS`` options, e.g. ``["-l place=scatter", "-m n"]``.
    :param env: environment variables for the job; templated; values never reach a command line.
    :param setup: lines run before the command (``module load ...``); templated.
    :param login_shell: start the job's script as a login shell; default: the connection's.
    :param poll_interval: seconds between status polls; default: the connection's, else
        ``[hpc] default_poll_interval`` (10).
    :param deferrable: wait in the triggerer or poll on the worker; default: ``[hpc]
        default_deferrable`` (True).
    :param log_tail_lines: lines of the job's output quoted in the error when it fails.
    :param skip_on_exit_code: an exit code, or a list of them, that marks the task skipped.
    :param array: how a mapped task (``.expand()``) is submitted. ``None`` (default): the mapped
        task instances that defer together go to the cluster as one job array per group of
        compatible ones (PBS Pro ``qsub -J``, Torque ``qsub -t``; same connection, script,
        resources and env; only the command differs), each instance still its own job
        ``<array>[<index>]`` with its own log, state, retry and cancel; ``False``: one job per
        instance; ``True``: as ``None``, but fail the task when it cannot be an element (see
        docs/arrays.rst). Needs the connection's ``flavour``.
    :param array_throttle: at most this many elements of one array run at once (Torque ``%N``,
        PBS Pro ``max_run_subjobs``).
    :param array_window: the longest an instance waits in the triggerer for its mapped siblings
        before it is submitted; default ``[hpc] array_window`` (10 s).
    """

    scheduler = "PBS"
    trigger_class = PbsJobTrigger
    template_fields: Sequence[str] = (*SshBatchJobOperator.template_fields, "pbs_queue")
    reserved_options = pbs.RESERVED_OPTIONS
    multi_job_options = directives.PBS_ARRAY
    env_rules = directives.SHELL_ENV_RULES + directives.PBS_ENV_RULES
    ui_color = "#fdf2e9"
    # Mapped task instances may run as elements of one array (False where each job is prepared
    # on the worker, as a Python function's is).
    supports_arrays: ClassVar[bool] = True
    array_arguments_check = staticmethod(check_array_arguments)

    def __init__(
        self,
        *,
        pbs_conn_id: str = PbsHook.default_conn_name,
        command: str | None = None,
        script: str | None = None,
        pbs_queue: str | None = None,
        partition: str | None = None,
        account: str | None = None,
        cpus: int | None = None,
        memory: int | str | None = None,
        walltime: timedelta | str | int | None = None,
        gpus: int | None = None,
        nodes: int | None = None,
        job_name: str | None = None,
        working_dir: str | None = None,
        extra_directives: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        setup: Sequence[str] = (),
        login_shell: bool | None = None,
        poll_interval: float | None = None,
        deferrable: bool | None = None,
        log_tail_lines: int = 20,
        skip_on_exit_code: int | Iterable[int] | None = None,
        array: bool | None = None,
        array_throttle: int | None = None,
        array_window: float | None = None,
        **kwargs: Any,
    ) -> None:
        _check_one_queue(unless_templated(partition))
        super().__init__(
            conn_id=pbs_conn_id,
            command=command,
            script=script,
            partition=partition,
            account=account,
            cpus=cpus,
            memory=memory,
            time_limit=walltime,
            gpus=gpus,
            nodes=nodes,
            job_name=job_name,
            working_dir=working_dir,
            extra_options=extra_directives,
            env=env,
            setup=setup,
            login_shell=login_shell,
            poll_interval=poll_interval,
            deferrable=deferrable,
            log_tail_lines=log_tail_lines,
            skip_on_exit_code=skip_on_exit_code,
            **kwargs,
        )
        check_name(unless_templated(pbs_queue), "pbs_queue")
        self.pbs_queue = pbs_queue
        self._flavour: PbsFlavour | None = None
        self.check_what_is_submitted()
        check_array_arguments(self.task_id, array, array_throttle, array_window)
        self.array = array
        self.array_throttle = array_throttle
        self.array_window = array_window

    def options_in(self, option: str) -> list[directives.OptionUse]:
        return directives.pbs_options(option)

    @property
    def pbs_conn_id(self) -> str:
        """The connection id, as rendered (templated as ``conn_id``)."""
        return self.conn_id

    def check_rendered(self) -> None:
        super().check_rendered()
        _check_one_queue(rendered_text(self.partition))
        self.pbs_queue = check_name(rendered_text(self.pbs_queue), "pbs_queue")

    def _defaults(self) -> tuple[Any, PbsClusterDefaults]:
        conn = PbsHook(self.pbs_conn_id).get_conn()
        return conn, PbsClusterDefaults.from_extra(conn.conn_id, conn.extra_dejson)

    def cluster(self) -> ClusterSettings:
        conn, defaults = self._defaults()
        self._flavour = self._flavour or defaults.flavour
        return ClusterSettings(
            conn_id=self.pbs_conn_id,
            target=SshTarget.from_connection(conn),
            # The queue: the task's queue=, else the connection's default queue, else partition=.
            partition=None,
            account=defaults.account,
            log_dir=defaults.log_dir,
            poll_interval_s=defaults.poll_interval_s,
            login_shell=PbsHook.login_shell_default(conn),
            extra=conn.extra_dejson,
        )

    def job_spec(self, context: Any, cluster: ClusterSettings) -> JobSpec:
        spec = super().job_spec(context, cluster)
        _, defaults = self._defaults()
        queue = self.pbs_queue or defaults.queue or self.job_resources.partition
        resources = spec.resources.__class__(**{**spec.resources.__dict__, "partition": queue})
        return JobSpec(**{**spec.__dict__, "resources": resources})

    def resume_from(self, payload: Mapping[str, Any]) -> None:
        # execute_complete runs on a fresh operator: the trigger's event says which flavour it was.
        if payload.get("flavour"):
            self._flavour = PbsFlavour(payload["flavour"])

    def _known_flavour(self) -> PbsFlavour:
        if self._flavour is None:
            raise RuntimeError("the PBS flavour is known only once the login node has been asked")
        return self._flavour

    def dialect(self, cluster: ClusterSettings) -> PbsDialect:
        return PbsDialect(self._known_flavour(), cluster.log_dir)

    def render(self, spec: JobSpec, cluster: ClusterSettings) -> str:
        # The flavour may still be unknown here: render again in submit() once it is.
        return self.checked_script(
            pbs.render_script(
                spec,
                self._flavour or PbsFlavour.TORQUE,
                script=self.script,
                exit_dir=pbs_exits.exit_dir(cluster.log_dir),
            )
        )

    async def submit(
        self, transport: SshTransport, spec: JobSpec, batch_script: str, key: JobKey, cluster: ClusterSettings
    ) -> Submitted:
        if self._flavour is None:
            self._flavour = await detect_flavour(transport)
            self.log.info("%s runs %s", cluster.conn_id, self._flavour.value)
            batch_script = self.render(spec, cluster)
        outcome = await submit_job(
            transport, spec, batch_script, self._flavour, key=key, log_dir=cluster.log_dir, env=self.job_env()
        )
        if "[]" in outcome.job_id:
            # PBS names an array 1234[] (Torque, PBS Pro): it became many jobs this task cannot
            # follow one by one, so it is deleted at once and the task fails saying why.
            await transport.run(pbs.cancel_script([outcome.job_id]))
            raise JobFailedError(
                f"PBS job {outcome.job_id} on {cluster.conn_id} is a job array, which this provider refuses "
                "(it follows single jobs and never reports a success on one element's word); it was deleted",
                None,
            )
        return Submitted(
            job_id=outcome.job_id,
            adopted=outcome.adopted,
            state=outcome.state,
            log_path=pbs.log_path(cluster.log_dir, key.task_digest, outcome.try_number),
            cursor_path=pbs.cursor_path(cluster.log_dir, key.task_digest, outcome.try_number),
            ended=outcome.ended,
        )

    def defer_as_array_element(
        self, context: Context, cluster: ClusterSettings, spec: JobSpec, batch_script: str, key: JobKey
    ) -> None:
        """A mapped task instance defers at once: the triggerer submits it with its siblings as one
        array (docs/arrays.rst); this worker touches no cluster."""
        arguments = {"flavour": self._flavour.value if self._flavour else "", "log_dir": cluster.log_dir}
        trigger = array_element_trigger(
            self, context, cluster, spec, batch_script, key, PbsArrayElementTrigger, **arguments
        )
        if trigger is not None:
            self.defer(trigger=trigger, method_name="execute_complete")

    def why_no_array_element(self) -> str | None:
        if self._flavour is None:
            return "the connection does not set its PBS flavour (extra 'flavour': 'pbs_pro' or 'torque')"
        if self.script is not None and not pbs_array.can_hold(self.render_for_array_check()):
            return "the script is not a POSIX shell script (its element could not record its exit)"
        return None

    def render_for_array_check(self) -> str:
        """The user's script with our lines, as an element would run it (flavour known)."""
        assert self._flavour is not None
        return pbs.render_script(
            JobSpec(command="", job_name=self.task_id), self._flavour, script=self.script, exit_dir="exit"
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | TriggerEvent) -> str:
        payload = event.payload if isinstance(event, TriggerEvent) else event
        status = payload.get("status")
        if status is not None and pbs_exits.is_array_element(JobStatus.from_dict(status)):
            # The Slurm-backed wrappers name an array's elements like single jobs; the element
            # watched recorded what it was. The others get the same refusal from their own script,
            # but may still queue: delete the array (cancelling the element cancels them all).
            self.resume_from(payload)
            self.log.error("PBS job %s is an element of a job array: deleting it", payload.get("job_id"))
            self.stop_from_a_fresh_thread(str(payload["job_id"]), StopCause.REFUSED)
        return super().execute_complete(context, event)

    def trigger_arguments(self, cluster: ClusterSettings) -> dict[str, Any]:
        if self._known_flavour() is PbsFlavour.PBS_PRO:
            self.log.info(
                "PBS Pro often copies a job's output back only when the job ends: if no lines appear "
                "while it runs, they will when it finishes"
            )
        return {"flavour": self._known_flavour().value, "log_dir": cluster.log_dir}


def _check_one_queue(partition: str | None) -> None:
    if partition is not None and "," in str(partition):
        raise JobSpecError(f"partition={partition!r}: PBS takes one queue, not a list")
