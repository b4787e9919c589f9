"""``BatchRevisionOperator``: run a command as an AWS Batch job, watched without holding a worker slot."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from airflow.sdk import Context
from airflow.triggers.base import TriggerEvent

import airflow_hpc_provider.aws_extra  # noqa: F401  (first: names the extra when it is missing)
from airflow_hpc_provider.config import default_poll_interval_s
from airflow_hpc_provider.dialects import batch
from airflow_hpc_provider.dialects.batch import ContainerRequest
from airflow_hpc_provider.errors import ConnectionConfigError, JobSpecError
from airflow_hpc_provider.hooks.batch import BatchHook, ResolvedDefinition
from airflow_hpc_provider.jobs import JobKey, JobStatus, signal_of_shell_status
from airflow_hpc_provider.links.batch import BatchJobLink, BatchLogLink, persist_links
from airflow_hpc_provider.operators.base import StopCause
from airflow_hpc_provider.operators.batch_arrays import BatchArrayElements, checked_array_arguments, wants_element
from airflow_hpc_provider.operators.batch_request import (
    ContainerCommand,
    DefinitionChoice,
    ScriptStore,
    git_checkout,
    resolve_definition,
    script_or_bootstrap,
)
from airflow_hpc_provider.operators.env_layers import ENV_RULE_FIELDS, with_prelude
from airflow_hpc_provider.resources import check_env_names, check_name, parse_memory_mb
from airflow_hpc_provider.triggers.batch import BatchJobTrigger
from airflow_hpc_provider.watching.batch import BatchTarget
from airflow_hpc_provider.watching.batch_logs import CURSOR_XCOM_KEY, MemoryPositionStore, SavedPosition
from airflow_hpc_provider.watching.batch_watch import watch_batch_job
from airflow_hpc_provider.watching.events import Outcome, WatchOutcome

MODES = ("locked", "revisions", "auto")
PLATFORMS = ("EC2", "FARGATE")
TIMEOUT_REASON = "Stopped from Airflow: the task passed its execution_timeout"
KILL_REASON = "Stopped from Airflow: the worker running the task was told to stop"


class BatchRevisionOperator(BatchArrayElements):
    """Submit an AWS Batch job and wait for it, deferred by default.

    Job definition modes (``job_definition_mode``):

    * ``locked``: submit against ``job_definition`` (a name, ``name:revision`` or ARN) as it is.
      An ``image`` that differs from the registered one is warned about once; the registered image
      wins (``strict_image=True`` makes that an error).
    * ``revisions``: ``job_definition`` is a template: its latest ACTIVE revision is copied with
      ``image`` swapped in and registered as a new revision of the same name, unless a revision with
      exactly that content exists (found by a content-hash tag, so any worker finds it).
    * ``auto``: no definition is named; a generic one, named from a hash of the image, roles and
      log group, is found or registered.

    :param command: shell commands, run as ``bash -c <script>``; templated.
    :param job_id: watch this existing job instead of submitting one; templated.
    :param image: the container image (``revisions`` and ``auto``; checked in ``locked``).
    :param job_definition: name, ``name:revision`` or ARN.
    :param job_definition_mode: ``locked``, ``revisions`` or ``auto`` (default: ``locked`` when a
        definition is named, else ``auto``).
    :param job_queue: the Batch job queue; default: the connection extra ``job_queue``. (``queue`` is
        Airflow's own executor queue, so it is not used for this.)
    :param vcpus: vCPUs (fractions on Fargate only).
    :param memory: MiB as an int, or ``"4G"``/``"512M"``.
    :param gpus: GPUs.
    :param env: environment variables, sent through ``containerOverrides.environment``; templated.
    :param timeout: ``attemptDurationSeconds`` (timedelta or seconds, at least 60).
    :param retry_attempts: Batch attempts, 1-10.
    :param tags: tags on the job (the operator adds its key tag).
    :param share_identifier: fair-share identifier.
    :param scheduling_priority: fair-share scheduling priority override.
    :param array_size: run an array job of this many children (2-10000).
    :param array_child_logs: also stream the logs of an array job's children.
    :param array: mapped instances as children of Batch array jobs: None (default) where possible,
        True (fail where not), False (one job each); see docs/arrays.rst.
    :param array_throttle: refused: Batch has no per-array limit on running children.
    :param array_window: seconds an instance waits for its siblings (``[hpc] array_window``).
    :param job_name: the base of the job name; default ``<dag_id>-<task_id>``.
    :param git: ``{"repo": url, "ref": "main", "path": "/tmp/src"}``: clone and check out the commit
        ``ref`` points at when the task starts.
    :param script_bucket: S3 bucket for scripts too large for SubmitJob.
    :param script_prefix: key prefix in ``script_bucket``.
    :param offload_threshold_bytes: scripts larger than this go to S3.
    :param job_role_arn: job role (``auto``); must be in the definition's account.
    :param execution_role_arn: execution role (``auto``, needed on Fargate).
    :param log_group: CloudWatch log group of ``auto`` definitions (default ``/aws/batch/job``).
    :param platform: ``EC2`` or ``FARGATE``.
    :param strict_image: in ``locked`` mode, fail instead of warning when ``image`` differs.
    :param wait_for_completion: wait for the job (default) or return its id once submitted.
    :param poll_interval: seconds between status rounds (one DescribeJobs per 100 jobs, shared);
        default: ``[hpc] default_poll_interval`` (10).
    :param deferrable: wait in the triggerer or on the worker; default: ``[hpc] default_deferrable``
        (True).
    :param aws_conn_id: Airflow connection of type ``aws``; templated.
    :param region_name: overrides the connection's region.
    :param skip_on_exit_code: an exit code, or a list of them, that marks the task skipped.
    """

    template_fields: Sequence[str] = (
        "command",
        "job_id",
        "image",
        "env",
        "job_name",
        "tags",
        "aws_conn_id",
        *ENV_RULE_FIELDS,
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"command": "bash", "env": "json", "tags": "json"}
    operator_extra_links = (BatchJobLink(), BatchLogLink())
    ui_color = "#fdf1e6"

    def __init__(
        self,
        *,
        command: str | None = None,
        job_id: str | None = None,
        image: str | None = None,
        job_definition: str | None = None,
        job_definition_mode: str | None = None,
        job_queue: str | None = None,
        vcpus: float | None = None,
        memory: int | str | None = None,
        gpus: int | None = None,
        env: Mapping[str, str] | None = None,
        timeout: timedelta | int | None = None,
        retry_attempts: int | None = None,
        tags: Mapping[str, str] | None = None,
        share_identifier: str | None = None,
        scheduling_priority: int | None = None,
        array_size: int | None = None,
        array_child_logs: bool = False,
        array: bool | None = None,
        array_throttle: int | None = None,
        array_window: float | None = None,
        job_name: str | None = None,
        git: Mapping[str, str] | None = None,
        script_bucket: str | None = None,
        script_prefix: str = "airflow-hpc/scripts",
        offload_threshold_bytes: int = batch.DEFAULT_OFFLOAD_THRESHOLD_BYTES,
        job_role_arn: str | None = None,
        execution_role_arn: str | None = None,
        log_group: str | None = None,
        platform: str = "EC2",
        strict_image: bool = False,
        wait_for_completion: bool = True,
        poll_interval: float | None = None,
        deferrable: bool | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        skip_on_exit_code: int | Iterable[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(deferrable=deferrable, skip_on_exit_code=skip_on_exit_code, **kwargs)
        mode = job_definition_mode or ("locked" if job_definition else "auto")
        if (command is None) == (job_id is None):
            raise JobSpecError(f"{self.task_id}: give exactly one of command= (submit) or job_id= (watch)")
        if mode not in MODES:
            raise JobSpecError(f"job_definition_mode={mode!r}: use one of {', '.join(MODES)}")
        if platform not in PLATFORMS:
            raise JobSpecError(f"platform={platform!r}: use EC2 or FARGATE")
        if command is not None:
            if mode in ("locked", "revisions") and not job_definition:
                raise JobSpecError(f"job_definition_mode={mode!r} needs job_definition=")
            if mode == "auto" and job_definition:
                raise JobSpecError("job_definition_mode='auto' registers its own definition: drop job_definition=")
            if mode in ("revisions", "auto") and not image:
                raise JobSpecError(f"job_definition_mode={mode!r} needs image=")
            if job_definition:
                batch.parse_definition_ref(job_definition)
        if poll_interval is not None and poll_interval <= 0:
            raise JobSpecError(f"poll_interval={poll_interval!r} must be more than zero")
        if array_size is not None:
            batch.check_range(array_size, "array_size", 2, 10000)
        self.array, self.array_throttle, self.array_window = checked_array_arguments(
            self.task_id, array, array_throttle, array_window
        )
        if git is not None and not git.get("repo"):
            raise JobSpecError("git= needs at least {'repo': <url>} (and optionally 'ref', 'path')")
        self.command = command
        self.job_id = job_id
        self.image = image
        self.job_definition = job_definition
        self.job_definition_mode = mode
        self.job_queue = check_name(job_queue, "job_queue")
        # Checked now so a bad value fails the DAG at parse time, not in the triggerer hours later.
        self.vcpus = batch.check_vcpus(vcpus, platform)
        self.memory_mb = batch.check_memory_mb(parse_memory_mb(memory))
        self.gpus = batch.check_range(gpus, "gpus", 1, 1024)
        self.env = dict(env or {})
        check_env_names(tuple(self.env))
        self.timeout_s = batch.check_timeout(timeout)
        self.retry_attempts = batch.check_range(retry_attempts, "retry_attempts", 1, 10)
        self.tags = dict(tags or {})
        self.share_identifier = share_identifier
        self.scheduling_priority = batch.check_range(scheduling_priority, "scheduling_priority", 0, 9999)
        self.array_size = array_size
        # Set by execute: what travels (env + env rules' carriers) and the rules' script lines.
        self._job_variables: dict[str, str] = {}
        self._env_prelude: tuple[str, ...] = ()
        self.array_child_logs = array_child_logs
        self.job_name = job_name
        self.git = dict(git) if git is not None else None
        self.script_bucket = script_bucket
        self.script_prefix = script_prefix.strip("/")
        self.offload_threshold_bytes = offload_threshold_bytes
        self.job_role_arn = job_role_arn
        self.execution_role_arn = execution_role_arn
        self.log_group = log_group
        self.platform = platform
        self.strict_image = strict_image
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self._submitted: str | None = None  # a job this task started (or adopted): ours to terminate

    # -- building the request ----------------------------------------------------------------------

    def _definition(self, hook: BatchHook) -> ResolvedDefinition:
        choice = DefinitionChoice(
            mode=self.job_definition_mode,
            job_definition=self.job_definition,
            image=self.image,
            strict_image=self.strict_image,
            job_role_arn=self.job_role_arn,
            execution_role_arn=self.execution_role_arn,
            log_group=self.log_group,
            platform=self.platform,
        )
        return resolve_definition(hook, choice, self.log)

    def _command_script(self, hook: BatchHook, key: JobKey, env: Mapping[str, str]) -> str:
        command = with_prelude(self.command or "", self._env_prelude)
        script = batch.render_script(command, tuple(env), git_checkout(self.git))
        store = ScriptStore(self.script_bucket, self.script_prefix, self.offload_threshold_bytes)
        return script_or_bootstrap(hook, key, script, store, self.log, env)

    def container_command(self, hook: BatchHook, key: JobKey, env: Mapping[str, str]) -> ContainerCommand:
        """What the container runs, after the adoption check and before SubmitJob: the command's
        script under ``bash -c`` here; ``@task.batch`` runs its bootstrap instead."""
        script = self._command_script(hook, key, env)
        return ContainerCommand(command=("bash", "-c", script), env={}, for_log=script)

    def _request(
        self, name: str, queue: str, definition: ResolvedDefinition, container: ContainerCommand, key: JobKey
    ) -> dict[str, Any]:
        env = {**self._job_variables, **container.env}
        request: dict[str, Any] = {
            "jobName": name,
            "jobQueue": queue,
            "jobDefinition": definition.arn,
            "containerOverrides": batch.checked_overrides(
                container.command,
                env,
                ContainerRequest(vcpus=self.vcpus, memory_mb=self.memory_mb, gpus=self.gpus),
            ),
            "tags": {**{str(k): str(v) for k, v in self.tags.items()}, batch.KEY_TAG: key.tag},
        }
        if self.timeout_s is not None:
            request["timeout"] = {"attemptDurationSeconds": self.timeout_s}
        if self.retry_attempts is not None:
            request["retryStrategy"] = {"attempts": self.retry_attempts}
        if self.share_identifier:
            request["shareIdentifier"] = self.share_identifier
        if self.scheduling_priority is not None:
            request["schedulingPriorityOverride"] = self.scheduling_priority
        if self.array_size:
            request["arrayProperties"] = {"size": self.array_size}
        return request

    # -- running -----------------------------------------------------------------------------------

    def batch_hook(self) -> BatchHook:
        """This run's one hook: each new one is a boto3 session and a config walk (~1 s on a busy
        host), which a task paid three times over when it completed."""
        hook: BatchHook | None = self.__dict__.get("_batch_hook")
        if hook is None:
            hook = BatchHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
            self.__dict__["_batch_hook"] = hook
        return hook

    def execute(self, context: Context) -> str:
        hook = self.batch_hook()
        region = str(hook.client().meta.region_name)
        ti = context["ti"]
        if self.job_id is not None:  # watch only: not ours to terminate
            job_id = str(self.job_id)
            self.log.info("Watching AWS Batch job %s (%s); this task did not submit it", job_id, hook.where())
        else:
            job_id = self._submit(hook, context)
            self._submitted = job_id
        self.push_xcom(context, "batch_job_id", job_id)
        BatchJobLink.persist(context, self, region, hook.conn_partition, job_id=job_id)
        BatchLogLink.persist(context, self, region, hook.conn_partition)
        if not self.wait_for_completion:
            if self._submitted is not None:
                # Submitting was this task's whole outcome: a later try (a cleared task) submits anew.
                self._claim(hook, job_id)
            return job_id
        interval = self.poll_interval or default_poll_interval_s()
        deadline = self.trigger_deadline()
        if self.deferrable:
            ti.xcom_push(key=CURSOR_XCOM_KEY, value=SavedPosition.before_watching())
            self.defer(
                trigger=BatchJobTrigger(
                    job_id=job_id,
                    aws_conn_id=self.aws_conn_id,
                    region_name=self.region_name,
                    poll_interval=interval,
                    deadline=deadline,
                    terminate_on_kill=self._submitted is not None,
                    include_children=self.array_child_logs,
                    dag_id=ti.dag_id,
                    task_id=ti.task_id,
                    run_id=ti.run_id,
                    map_index=-1 if ti.map_index is None else ti.map_index,
                ),
                method_name="execute_complete",
            )
        # On the worker, Airflow's own execution_timeout applies (and calls on_kill, which terminates).
        outcome = asyncio.run(
            watch_batch_job(
                BatchTarget(self.aws_conn_id, self.region_name),
                job_id,
                MemoryPositionStore(),
                self.log,
                interval_s=interval,
                deadline=None,
                include_children=self.array_child_logs,
            )
        )
        return self.execute_complete(
            context, {**outcome.to_dict(), "aws_conn_id": self.aws_conn_id, "owned": self._submitted is not None}
        )

    def _claim(self, hook: BatchHook, job_id: str) -> None:
        try:
            hook.claim(job_id, batch.CLAIM_BY_OUTCOME)
        except Exception as error:
            self.log.warning("could not tag AWS Batch job %s as taken (a retry may adopt it): %s", job_id, error)

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        # Keep a template's final newline: an env value or a command must arrive exactly as written.
        env = jinja_env or self.get_template_env(self.dag if self.has_dag() else None)
        super().render_template_fields(context, env.overlay(keep_trailing_newline=True))

    def _submit(self, hook: BatchHook, context: Context) -> str:
        ti = context["ti"]
        queue = self.job_queue or hook.default_queue()
        if not queue:
            raise ConnectionConfigError(
                f"no job queue: give job_queue= or set job_queue in the extra of connection {self.aws_conn_id}"
            )
        key = self.job_key(context)
        base = batch.job_name_base(ti.dag_id, ti.task_id, self.job_name)
        definition: ResolvedDefinition | None = None
        if wants_element(self, context):
            definition = self._definition(hook)
            self._layer_environment(queue)
            self.defer_as_array_element(context, key, base, queue, definition.arn)
        earlier = hook.find_job_to_adopt(queue, base, key)
        if earlier is not None:
            self.log.info(
                "Adopted AWS Batch job %s (%s): an earlier try of this task submitted it and it %s",
                earlier.job_id,
                earlier.job_name,
                f"ended {earlier.status} while nothing watched it; its outcome and output decide this try "
                "(nothing is resubmitted)"
                if earlier.ended
                else f"is still {earlier.status}",
            )
            return earlier.job_id
        if definition is None:
            definition = self._definition(hook)
            self._layer_environment(queue)
        container = self.container_command(hook, key, self._job_variables)
        request = self._request(batch.job_name_for(base, key), queue, definition, container, key)
        job_id = hook.submit(request)
        origin = "registered by this task" if definition.registered else "existing"
        self.log.info(
            "Submitted AWS Batch job %s (%s) to queue %s with %s:%s (%s)",
            job_id,
            request["jobName"],
            queue,
            definition.name,
            definition.revision,
            origin,
        )
        self.log.info("Script:\n%s", container.for_log)
        return job_id

    def _layer_environment(self, queue: str) -> None:
        """The job's env and env rule lines (logged by name, never by value), kept for the request."""
        environment = self.layered_job_environment(
            conn_id=self.aws_conn_id,
            facts={"scheduler": "batch", "queue": queue, "image": self.image},
            env={str(k): str(v) for k, v in self.env.items()},
        )
        if environment.prelude and type(self).container_command is not BatchRevisionOperator.container_command:
            raise JobSpecError(
                f"{type(self).__name__} runs its own container command, which does not apply env rules yet: "
                "use env= (or BatchRevisionOperator) for now"
            )
        self._job_variables, self._env_prelude = environment.variables, environment.prelude

    def execute_complete(self, context: Context, event: dict[str, Any] | TriggerEvent) -> str:
        payload = event.payload if isinstance(event, TriggerEvent) else event
        outcome = WatchOutcome.from_dict(payload)
        if payload.get("array_element"):  # its id was known only once the triggerer submitted it
            self.push_xcom(context, "batch_job_id", outcome.job_id)
        error = persist_links(context, self, self.batch_hook(), outcome.job_id, job=bool(payload.get("array_element")))
        if error:
            self.log.warning("could not record the job's log stream for its link: %s", error)
        owned = bool(payload.get("owned", True))  # watch-only: not ours to stop or claim
        # A child of an array cannot be tagged (Batch refuses): only its own try ever adopts it.
        if owned and outcome.kind is Outcome.ENDED and outcome.status is not None and ":" not in outcome.job_id:
            # This try takes the job's outcome: no later try may adopt it (a trigger also tagged it
            # when it began watching; on the worker, or if that failed, it happens here).
            self._claim(self.batch_hook(), outcome.job_id)
        return self.finish(outcome, payload, owned=owned)

    stop_words = ("terminating", "terminated")

    @property
    def job_noun(self) -> str:
        return "AWS Batch job"

    def exit_signal(self, status: JobStatus) -> int | None:
        # A container's exit code of 128 + N is Docker's word for "killed by signal N" (137:
        # SIGKILL, often the out-of-memory killer or a stop), so it is named as such.
        return signal_of_shell_status(status.exit_code)

    def stop_job(self, job_id: str, cause: StopCause) -> str:
        reason = TIMEOUT_REASON if cause is StopCause.TIME_LIMIT else KILL_REASON
        self.batch_hook().terminate(job_id, reason)
        return f"Terminated AWS Batch job {job_id}"

    def on_kill(self) -> None:
        """Worker-side kill (non-deferrable path, or the worker's own timeout): terminate our job."""
        if self._submitted is not None:
            self.stop_from_a_fresh_thread(self._submitted, StopCause.KILLED)


# ContainerCommand moved to batch_request.py: still importable from here.
__all__ = ["KILL_REASON", "TIMEOUT_REASON", "BatchRevisionOperator", "ContainerCommand"]
