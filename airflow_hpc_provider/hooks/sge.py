"""The ``sge`` connection type: a Grid Engine login node reached over SSH, plus the cluster's defaults.

Everything SSH (keys, host keys, jump host, the Test button's connection checks) is
:class:`~airflow_hpc_provider.hooks.ssh.SshClusterHook`'s; this module adds what Grid Engine
names differently: its queue, project and parallel environment, and how its qsub refuses a job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_hpc_provider.config import default_log_dir
from airflow_hpc_provider.dialects import sge
from airflow_hpc_provider.errors import ConnectionConfigError
from airflow_hpc_provider.hooks.probe import SchedulerProbe
from airflow_hpc_provider.hooks.ssh import CommandResult, SshClusterHook, _number
from airflow_hpc_provider.hooks.submission import over_ssh
from airflow_hpc_provider.resources import check_name

# Grid Engine's qsub: "Unable to run job: job rejected: the requested project "x" does not exist".
SGE_REFUSALS: tuple[str, ...] = (
    "job rejected",
    "was rejected",
    "unknown queue",
    "unknown resource",
    "is not a time value",
    "is not a memory value",
    "is not a valid object name",
    "invalid option argument",
    "denied:",
)


@dataclass(frozen=True)
class SgeClusterDefaults:
    """What an ``sge`` connection's extra may set, so DAGs need not repeat it.

    ``project`` is charged (``-P``) when a task names no account; ``parallel_environment`` is the
    site's name for the environment that grants several slots on one host (``-pe <name> N``),
    needed as soon as a task asks for more than one CPU.
    """

    queue: str | None = None
    project: str | None = None
    parallel_environment: str | None = None
    log_dir: str = ""
    poll_interval_s: float | None = None

    @classmethod
    def from_extra(cls, conn_id: str, extra: Mapping[str, Any]) -> SgeClusterDefaults:
        try:
            defaults = cls(
                queue=check_name(extra.get("queue") or None, "queue"),
                project=check_name(extra.get("project") or extra.get("account") or None, "project"),
                parallel_environment=check_name(extra.get("parallel_environment") or None, "parallel_environment"),
                log_dir=str(extra.get("log_dir") or default_log_dir()),
                poll_interval_s=_number(extra, "poll_interval", 10.0) if extra.get("poll_interval") else None,
            )
            sge.SgeDialect(defaults.log_dir)  # a log directory qsub -o would misread fails here
        except ValueError as error:
            raise ConnectionConfigError(f"connection {conn_id!r}: {error}") from None
        return defaults


class SgeHook(SshClusterHook):
    """Reach a Grid Engine cluster's login node over SSH (asyncssh), host keys verified by default.

    :param sge_conn_id: an Airflow connection of type ``sge`` (or the SSH provider's ``ssh``).
    """

    conn_name_attr = "sge_conn_id"
    default_conn_name = "sge_default"
    conn_type = "sge"
    hook_name = "Grid Engine (over SSH)"

    def __init__(self, sge_conn_id: str = default_conn_name) -> None:
        super().__init__(sge_conn_id)
        self.sge_conn_id = sge_conn_id

    def defaults(self) -> SgeClusterDefaults:
        return SgeClusterDefaults.from_extra(self.sge_conn_id, self.get_conn().extra_dejson)

    def scheduler_probe(self, extra: Mapping[str, Any]) -> SchedulerProbe:
        return SgeProbe(queue=SgeClusterDefaults.from_extra(self.sge_conn_id, extra).queue)


@dataclass(frozen=True)
class SgeProbe(SchedulerProbe):
    """The Test button's look at a Grid Engine login node: its version and the queues it offers."""

    queue: str | None = None
    scheduler: str = "Grid Engine"
    commands: tuple[str, ...] = ("qsub", "qstat", "qacct", "qdel")

    def script(self) -> str:
        # `qstat -help` starts with the version ("SGE 8.1.9"); `qconf -sql` lists the cluster queues.
        return self.commands_check() + "qstat -help 2>&1 | head -n 1\n" + self.section("queues", "qconf -sql 2>&1")

    def judge(self, result: CommandResult, where: str) -> tuple[bool, str]:
        sections = self.sections(result.text)
        version = sections.get("", "").strip() or "unknown version"
        queues = [line.strip() for line in sections.get("queues", "").splitlines() if line.strip()]
        summary = f"Connected to {where}: {version}. Queues: {', '.join(queues) or 'none listed'}."
        if self.queue and queues and self.queue not in queues:
            return False, f"{summary} But the connection's default queue {self.queue!r} is not among them."
        return True, summary


# submit_job(transport, spec, batch_script, *, key, log_dir, env) -> SubmitOutcome
submit_job = over_ssh(sge.submit_script, sge.parse_submit_output, "qsub", SGE_REFUSALS)
