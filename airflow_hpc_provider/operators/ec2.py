"""``Ec2EphemeralOperator``: one throw-away EC2 instance per task, reached only through SSM.

Flow: find an instance an earlier try left running (by its tags) or launch one -> wait until it runs
and its sshd answers through the tunnel (start-up timeout) -> deliver the task's script and env values
over the tunnel -> defer; the trigger streams the log, archives it, reads the exit code and terminates
the instance. Any failure before deferring terminates the instance too.

``Ec2ReaperOperator`` (:mod:`.ec2_reaper`, importable from here too) terminates tagged instances
whose task instance is no longer running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from airflow.sdk import Context, conf
from airflow.triggers.base import TriggerEvent

import airflow_hpc_provider.aws_extra  # noqa: F401  (first: names the extra when it is missing)
from airflow_hpc_provider.dialects import ec2, ec2_boot
from airflow_hpc_provider.errors import (
    ConnectionConfigError,
    InstanceLimitError,
    JobSpecError,
)
from airflow_hpc_provider.hooks.ec2 import Ec2InstanceHook, LaunchRequest
from airflow_hpc_provider.hooks.ssm import SsmTunnelTarget, find_tools
from airflow_hpc_provider.jobs import JobKey, JobStatus, signal_of_shell_status
from airflow_hpc_provider.operators.base import StopCause, ending_summary
from airflow_hpc_provider.operators.ec2_reaper import Ec2ReaperOperator
from airflow_hpc_provider.operators.ec2_startup import Delivery, start_up
from airflow_hpc_provider.operators.env_layers import ENV_RULE_FIELDS, LayeredEnvOperator, with_prelude
from airflow_hpc_provider.resources import check_env_names, parse_time_limit
from airflow_hpc_provider.triggers.ec2 import Ec2InstanceTrigger
from airflow_hpc_provider.watching.ec2_watch import follow_instance
from airflow_hpc_provider.watching.events import WatchOutcome

DEFAULT_POLL_INTERVAL_S = 15.0
DEFAULT_STARTUP_TIMEOUT = timedelta(minutes=10)
DEFAULT_IDLE_SLACK = timedelta(minutes=10)
DEFAULT_KILL_AFTER = timedelta(seconds=30)


@dataclass(frozen=True)
class Ec2Settings:
    """Infrastructure settings: the operator's arguments over the connection's ``ec2`` extra."""

    ami_id: str
    instance_types: dict[str, str]
    subnet_id: str | None
    security_group_ids: tuple[str, ...]
    instance_profile: str | None
    max_instances: int | None
    tag_prefix: str
    os_user: str
    work_dir: str
    tunnel: str
    host_key_check: str
    archive_s3_prefix: str | None
    extra_tags: dict[str, str]


class Ec2EphemeralOperator(LayeredEnvOperator):
    """Run a container on a fresh EC2 instance, watched without holding a worker slot.

    Infrastructure (``ami_id``, ``subnet_id``...) may come from the ``aws`` connection's extra, under
    ``"ec2": {...}`` with the same names; an argument given here wins.

    :param image: the container image; the instance pulls it.
    :param command: shell commands, or ``script=``: a whole script (or the path of one ending in
        ``.sh``/``.bash`` on the DAG's template search path); run by ``shell`` in the container,
        mounted read-only. Templated. It travels over the SSM tunnel, never in user-data.
    :param env: environment for the container; templated. Values travel over the tunnel into a 0600
        file that the boot script reads into ``docker run -e NAME``; never in user-data, trigger
        arguments or logs.
    :param time_limit: the container's limit (``timeout -k``); also sizes the safety timer.
    :param partition: the key into ``instance_types`` (default: ``"default"``).
    :param instance_types: ``{"default": "t3.small", "gpu": "g5.xlarge", ...}``.
    :param max_instances: refuse to launch when this many instances of this connection are live.
    :param startup_timeout: running + sshd reachable + task delivered within this, or fail and terminate.
    :param idle_slack: how long the instance waits after the task ends before powering itself off, and
        the margin its safety timer adds past the time limit.
    :param host_key_check: ``console`` (verify the host key the instance prints on its console) or
        ``off`` (explicit opt-out for this task; logged as a warning on every connection).
    :param tunnel: ``ssh-session`` (``AWS-StartSSHSession``, default) or ``port-forward``.
    :param archive_s3_prefix: ``s3://bucket/prefix``: also upload the whole log there.
    :param extra_tags: more tags on the instance and its volumes.
    :param deferrable: wait in the triggerer or on the worker; default: ``[hpc] default_deferrable``
        (True).
    :param aws_conn_id: Airflow connection of type ``aws``; templated.
    :param skip_on_exit_code: an exit code of the container, or a list of them, that marks the task skipped.
    """

    template_fields: Sequence[str] = (
        "command",
        "script",
        "env",
        "image",
        "extra_tags",
        "aws_conn_id",
        *ENV_RULE_FIELDS,
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"command": "bash", "script": "bash", "env": "json"}
    ui_color = "#f3e6fd"

    def __init__(
        self,
        *,
        image: str,
        command: str | None = None,
        script: str | None = None,
        env: Mapping[str, str] | None = None,
        time_limit: timedelta | str | int,
        partition: str | None = None,
        instance_types: Mapping[str, str] | None = None,
        ami_id: str | None = None,
        subnet_id: str | None = None,
        security_group_ids: Sequence[str] | None = None,
        instance_profile: str | None = None,
        max_instances: int | None = None,
        tag_prefix: str | None = None,
        extra_tags: Mapping[str, str] | None = None,
        os_user: str | None = None,
        work_dir: str | None = None,
        shell: str = "/bin/sh",
        tunnel: str | None = None,
        host_key_check: str | None = None,
        startup_timeout: timedelta = DEFAULT_STARTUP_TIMEOUT,
        idle_slack: timedelta = DEFAULT_IDLE_SLACK,
        kill_after: timedelta = DEFAULT_KILL_AFTER,
        unreachable_timeout: timedelta = timedelta(minutes=5),
        archive_s3_prefix: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL_S,
        deferrable: bool | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        log_tail_lines: int = 20,
        skip_on_exit_code: int | Iterable[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(deferrable=deferrable, skip_on_exit_code=skip_on_exit_code, **kwargs)
        if (command is None) == (script is None):
            raise JobSpecError(f"{self.task_id}: give exactly one of command= or script=")
        if poll_interval <= 0:
            raise JobSpecError(f"poll_interval={poll_interval!r} must be more than zero")
        if max_instances is not None and max_instances < 1:
            raise JobSpecError(f"max_instances={max_instances!r} must be at least 1")
        limit = parse_time_limit(time_limit)
        assert limit is not None
        self.time_limit = limit
        self.image = image
        if "{{" not in image:
            ec2.check_image(image)
        self.command = command
        self.script = script
        self.env = dict(env or {})
        check_env_names(tuple(self.env))
        self.partition = partition
        self.instance_types = ec2.check_instance_types(instance_types) if instance_types is not None else None
        if self.instance_types is not None:
            ec2.choose_instance_type(self.instance_types, partition)
        self.ami_id = ami_id
        self.subnet_id = subnet_id
        self.security_group_ids = tuple(security_group_ids) if security_group_ids is not None else None
        self.instance_profile = instance_profile
        self.max_instances = max_instances
        self.tag_prefix = tag_prefix
        self.extra_tags = dict(extra_tags or {})
        self.os_user = os_user
        self.work_dir = work_dir
        self.shell = shell
        self.tunnel = tunnel
        self.host_key_check = host_key_check
        self.startup_timeout = startup_timeout
        self.idle_slack = idle_slack
        self.kill_after = kill_after
        self.unreachable_timeout = unreachable_timeout
        self.archive_s3_prefix = archive_s3_prefix
        self.poll_interval = poll_interval
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.log_tail_lines = log_tail_lines
        self._instance_id: str | None = None

    # -- settings ----------------------------------------------------------------------------------

    def hook(self) -> Ec2InstanceHook:
        return Ec2InstanceHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)

    def settings(self, hook: Ec2InstanceHook) -> Ec2Settings:
        extra = hook.settings()

        def pick(name: str, value: Any, default: Any = None) -> Any:
            return value if value is not None else extra.get(name, default)

        ami = pick("ami_id", self.ami_id)
        if not ami:
            raise ConnectionConfigError(f"no ami_id: give ami_id= or 'ec2': {{'ami_id': ...}} in {hook.where()}")
        types = pick("instance_types", self.instance_types)
        if not types:
            raise ConnectionConfigError(f"no instance_types: give instance_types= or set it in {hook.where()}")
        groups = pick("security_group_ids", self.security_group_ids, ())
        max_instances = pick("max_instances", self.max_instances)
        settings = Ec2Settings(
            ami_id=str(ami),
            instance_types=ec2.check_instance_types(types),
            subnet_id=pick("subnet_id", self.subnet_id),
            security_group_ids=tuple(str(group) for group in groups),
            instance_profile=pick("instance_profile", self.instance_profile),
            max_instances=None if max_instances is None else int(max_instances),
            tag_prefix=str(pick("tag_prefix", self.tag_prefix, ec2.DEFAULT_TAG_PREFIX)),
            os_user=str(pick("os_user", self.os_user, ec2.DEFAULT_OS_USER)),
            work_dir=str(pick("work_dir", self.work_dir, ec2.DEFAULT_WORK_DIR)),
            tunnel=str(pick("tunnel", self.tunnel, "ssh-session")),
            host_key_check=str(pick("host_key_check", self.host_key_check, "console")),
            archive_s3_prefix=pick("archive_s3_prefix", self.archive_s3_prefix),
            extra_tags={**dict(extra.get("extra_tags") or {}), **self.extra_tags},
        )
        if settings.host_key_check not in ("console", "off"):
            raise ConnectionConfigError(f"host_key_check={settings.host_key_check!r}: use 'console' or 'off'")
        return settings

    def job_script(self) -> str:
        text = self.script if self.script is not None else self.command
        if not isinstance(text, str):
            raise JobSpecError(f"command/script must be a string, not {type(text).__name__}")
        return text

    def job_env(self) -> dict[str, str]:
        env = {str(name): str(value) for name, value in self.env.items()}
        check_env_names(tuple(env))
        return env

    def _tunnel(self, settings: Ec2Settings, instance_id: str, **kwargs: Any) -> SsmTunnelTarget:
        return SsmTunnelTarget(
            instance_id=instance_id,
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            os_user=settings.os_user,
            tunnel=settings.tunnel,
            **kwargs,
        )

    # -- running -----------------------------------------------------------------------------------

    def execute(self, context: Context) -> str:
        find_tools()  # before launching anything: no instance for a host that cannot reach it
        hook = self.hook()
        settings = self.settings(hook)
        key = self.job_key(context)
        environment = self.layered_job_environment(
            conn_id=self.aws_conn_id,
            facts={"scheduler": "ec2", "partition": self.partition, "image": self.image},
            env=self.job_env(),
        )
        script, env = with_prelude(self.job_script(), environment.prelude), environment.variables
        instance_id, run_dir = self._adopt_or_launch(hook, settings, context, key)
        self._instance_id = instance_id
        self.push_xcom(context, "ec2_instance_id", instance_id)
        try:
            delivery = Delivery(instance_id, run_dir, script, env)
            host_keys = asyncio.run(self._start_up(hook, settings, delivery))
        except BaseException:
            self.log.error("Start-up of %s failed: terminating it", instance_id)
            self.stop_from_a_fresh_thread(instance_id, StopCause.DONE)
            raise
        deadline = time.time() + (self.time_limit + self.kill_after).total_seconds() + 2 * self.poll_interval + 60
        if self.execution_timeout:
            # Our own deadline fires first, so the trigger (not Airflow's timeout) ends the instance.
            deadline = min(deadline, time.time() + self.execution_timeout.total_seconds() - 5)
        trigger = Ec2InstanceTrigger(
            instance_id=instance_id,
            run_dir=run_dir,
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            os_user=settings.os_user,
            tunnel=settings.tunnel,
            host_key_check="off" if settings.host_key_check == "off" else "pinned",
            host_keys=list(host_keys),
            poll_interval=self.poll_interval,
            deadline=deadline,
            unreachable_timeout=self.unreachable_timeout.total_seconds(),
            archive_path=self._archive_path(context, instance_id),
            archive_s3_uri=self._archive_uri(settings, context, instance_id),
        )
        if self.deferrable:
            self.defer(trigger=trigger, method_name="execute_complete")
        try:
            followed = asyncio.run(follow_instance(trigger.watch(), self.log))
        finally:
            self.stop_from_a_fresh_thread(instance_id, StopCause.DONE)
        return self.execute_complete(context, {**followed.payload(), "instance_id": instance_id, "terminated": True})

    def _adopt_or_launch(
        self, hook: Ec2InstanceHook, settings: Ec2Settings, context: Context, key: JobKey
    ) -> tuple[str, str]:
        ti = context["ti"]
        live = hook.find_live(settings.tag_prefix, key.task_digest)
        if live is not None:
            owner = ec2.TaskTags.from_tags(live.tags, settings.tag_prefix)
            assert owner is not None  # find_live only returns instances with our key tag
            self.log.info(
                "Adopted EC2 instance %s (%s): try %s of this task launched it and it is still there",
                live.instance_id,
                live.state,
                owner.try_number,
            )
            return live.instance_id, ec2.run_dir_for(settings.work_dir, owner.key)
        backend = str(self.aws_conn_id)
        if settings.max_instances is not None:
            running = hook.tagged(settings.tag_prefix, {f"{settings.tag_prefix}:backend": backend})
            if len(running) >= settings.max_instances:
                raise InstanceLimitError(
                    f"{len(running)} instances of connection {backend!r} are live "
                    f"({', '.join(i.instance_id for i in running)}) and max_instances is "
                    f"{settings.max_instances}: not launching another"
                )
        run_dir = ec2.run_dir_for(settings.work_dir, key)
        user_data = ec2_boot.render_user_data(
            ec2_boot.RunnerSpec(
                image=ec2.check_image(self.image),
                run_dir=run_dir,
                os_user=settings.os_user,
                time_limit_s=int(self.time_limit.total_seconds()),
                kill_after_s=int(self.kill_after.total_seconds()),
                startup_timeout_s=int(self.startup_timeout.total_seconds()),
                idle_slack_s=int(self.idle_slack.total_seconds()),
                shell=self.shell,
                container_name=f"airflow-hpc-{key.task_digest}",
            )
        )
        ec2_boot.check_user_data_size(user_data)
        owner = ec2.TaskTags(
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            map_index=-1 if ti.map_index is None else ti.map_index,
            try_number=ti.try_number,
            backend=backend,
            key=key,
        )
        instance_type = ec2.choose_instance_type(settings.instance_types, self.partition)
        instance_id = hook.launch(
            LaunchRequest(
                image_id=settings.ami_id,
                instance_type=instance_type,
                user_data=user_data,
                tags=owner.tags(settings.tag_prefix, settings.extra_tags),
                client_token=f"{key.task_digest}-{key.try_number}",
                subnet_id=settings.subnet_id,
                security_group_ids=settings.security_group_ids,
                instance_profile=settings.instance_profile,
            )
        )
        self.log.info("Launched EC2 instance %s (%s, %s) on %s", instance_id, instance_type, self.image, hook.where())
        return instance_id, run_dir

    async def _start_up(self, hook: Ec2InstanceHook, settings: Ec2Settings, delivery: Delivery) -> tuple[str, ...]:
        """Running, sshd reachable, host key verified, task delivered (ec2_startup.py)."""

        def tunnel(availability_zone: str | None) -> SsmTunnelTarget:
            return self._tunnel(
                settings,
                delivery.instance_id,
                host_key_check=settings.host_key_check,
                availability_zone=availability_zone,
            )

        return await start_up(
            hook, tunnel, delivery, timeout=self.startup_timeout, poll_interval_s=self.poll_interval, log=self.log
        )

    def _archive_path(self, context: Context, instance_id: str) -> str:
        ti = context["ti"]
        base = Path(conf.get("logging", "base_log_folder"))
        parts = (
            "ec2_ephemeral",
            f"dag_id={ti.dag_id}",
            f"run_id={ti.run_id}",
            f"task_id={ti.task_id}",
            f"attempt={ti.try_number}",
        )
        name = f"{instance_id}.log" if ti.map_index in (None, -1) else f"{instance_id}.map{ti.map_index}.log"
        return str(base.joinpath(*parts, name))

    def _archive_uri(self, settings: Ec2Settings, context: Context, instance_id: str) -> str | None:
        if not settings.archive_s3_prefix:
            return None
        ti = context["ti"]
        prefix = settings.archive_s3_prefix.rstrip("/")
        return f"{prefix}/{ti.dag_id}/{ti.run_id}/{ti.task_id}/attempt={ti.try_number}/{instance_id}.log"

    def execute_complete(self, context: Context, event: dict[str, Any] | TriggerEvent) -> str:
        payload = event.payload if isinstance(event, TriggerEvent) else event
        outcome = WatchOutcome.from_dict(payload)
        instance_id = str(payload.get("instance_id", outcome.job_id))
        self._instance_id = instance_id
        if not payload.get("terminated"):
            self.stop_from_a_fresh_thread(instance_id, StopCause.DONE)
        for place in payload.get("archived") or ():
            self.log.info("The whole log of %s is archived at %s", instance_id, place)
        ended = WatchOutcome(outcome.kind, instance_id, outcome.status, outcome.message)
        return self.finish(ended, payload, already_stopped=True)

    stop_words = ("terminating", "terminated")

    @property
    def job_noun(self) -> str:
        return "EC2 instance"

    def exit_signal(self, status: JobStatus) -> int | None:
        # docker run reports a container killed by signal N as 128 + N (137: SIGKILL, which is also
        # how the runner's `timeout -k` ends a container that outlived its time limit).
        return signal_of_shell_status(status.exit_code)

    def summary(self, status: JobStatus) -> str:
        text = ending_summary(f"EC2 instance {status.job_id}: the container", status, signal=self.exit_signal(status))
        if status.exit_code == ec2.RUNNER_FAILED_EXIT:
            text += ", the runner could not start it (image pull, or the task never arrived)"
        return text

    def failure_tail(self, payload: Mapping[str, Any]) -> str:
        return self._tail(payload.get("archived") or [])

    def _tail(self, archived: Sequence[str]) -> str:
        for place in archived:
            if place.startswith("/") and Path(place).is_file() and self.log_tail_lines > 0:
                lines = Path(place).read_text(errors="replace").splitlines()
                return "\n".join(lines[-self.log_tail_lines :])
        return ""

    def stop_job(self, job_id: str, cause: StopCause) -> str:
        self.hook().terminate([job_id])
        return f"Terminated EC2 instance {job_id}"

    def on_kill(self) -> None:
        """Worker-side kill (start-up, or the non-deferrable watch): terminate the instance."""
        if self._instance_id is not None:
            self.stop_from_a_fresh_thread(self._instance_id, StopCause.KILLED)


__all__ = ["Ec2EphemeralOperator", "Ec2ReaperOperator", "Ec2Settings"]
