"""The ``slurm`` connection type: a login node reached over SSH, plus the cluster's defaults.

Submission, cancellation and reading a job's output are one SSH round trip each, through
:class:`~airflow_hpc_provider.hooks.ssh.SshTransport`. Watching goes through the shared poller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_hpc_provider.config import BUILTIN_LOG_DIR, default_log_dir
from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.errors import ConnectionConfigError
from airflow_hpc_provider.hooks.probe import SchedulerProbe
from airflow_hpc_provider.hooks.refusals import SLURM_REFUSALS
from airflow_hpc_provider.hooks.ssh import CommandResult, SshClusterHook, _number
from airflow_hpc_provider.hooks.submission import over_ssh
from airflow_hpc_provider.resources import check_name

DEFAULT_LOG_DIR = BUILTIN_LOG_DIR


@dataclass(frozen=True)
class ClusterDefaults:
    """Per-cluster defaults kept on the connection, so DAGs need not repeat them."""

    account: str | None = None
    partition: str | None = None
    max_concurrent_jobs: int | None = None
    log_dir: str = DEFAULT_LOG_DIR
    poll_interval_s: float | None = None

    @classmethod
    def from_extra(cls, conn_id: str, extra: Mapping[str, Any]) -> ClusterDefaults:
        log_dir = str(extra.get("log_dir") or default_log_dir())
        if "%" in log_dir or "\n" in log_dir:
            # sbatch expands %-patterns in output paths; a path with them would not be found again.
            raise ConnectionConfigError(f"connection {conn_id!r}: log_dir={log_dir!r} may not contain % or newlines")
        max_jobs = extra.get("max_concurrent_jobs")
        if max_jobs not in (None, "") and (
            isinstance(max_jobs, bool) or not str(max_jobs).isdigit() or int(str(max_jobs)) < 1
        ):
            raise ConnectionConfigError(
                f"connection {conn_id!r}: max_concurrent_jobs={max_jobs!r} must be a whole number of at least 1"
            )
        try:
            return cls(
                account=check_name(extra.get("account") or None, "account"),
                partition=check_name(extra.get("partition") or None, "partition", allow_list=True),
                max_concurrent_jobs=int(str(max_jobs)) if max_jobs not in (None, "") else None,
                log_dir=log_dir,
                poll_interval_s=_number(extra, "poll_interval", 10.0) if extra.get("poll_interval") else None,
            )
        except ValueError as error:
            raise ConnectionConfigError(f"connection {conn_id!r}: {error}") from None


class SlurmHook(SshClusterHook):
    """Reach a Slurm cluster's login node over SSH (asyncssh), with host keys verified by default.

    :param slurm_conn_id: an Airflow connection of type ``slurm`` (or the SSH provider's ``ssh``).
    """

    conn_name_attr = "slurm_conn_id"
    default_conn_name = "slurm_default"
    conn_type = "slurm"
    hook_name = "Slurm (over SSH)"

    def __init__(self, slurm_conn_id: str = default_conn_name) -> None:
        super().__init__(slurm_conn_id)
        self.slurm_conn_id = slurm_conn_id

    def scheduler_probe(self, extra: Mapping[str, Any]) -> SchedulerProbe:
        defaults = ClusterDefaults.from_extra(self.slurm_conn_id, extra)
        return SlurmProbe(partition=defaults.partition, account=defaults.account)


@dataclass(frozen=True)
class SlurmProbe(SchedulerProbe):
    """The Test button's look at a Slurm login node: version, partitions and accounts the user may use."""

    partition: str | None = None
    account: str | None = None
    scheduler: str = "Slurm"
    commands: tuple[str, ...] = ("sbatch", "squeue", "sacct", "scancel", "sinfo")

    def script(self) -> str:
        # sinfo lists the partitions this user may submit to (hidden and forbidden ones are left
        # out); sacctmgr may be absent or refuse without accounting: then accounts are not checked.
        return (
            self.commands_check()
            + "sinfo --version\n"
            + self.section("partitions", "sinfo -h -o '%P' 2>&1")
            + self.section("accounts", 'sacctmgr -n -P show assoc user="$(id -un)" format=account 2>/dev/null')
        )

    def judge(self, result: CommandResult, where: str) -> tuple[bool, str]:
        sections = self.sections(result.text)
        version = sections.get("", "").strip() or "unknown version"
        listed = [name.strip() for name in sections.get("partitions", "").splitlines() if name.strip()]
        default = next((name.rstrip("*") for name in listed if name.endswith("*")), None)
        partitions = [name.rstrip("*") for name in listed]
        accounts = sorted({line.strip() for line in sections.get("accounts", "").splitlines() if line.strip()})
        shown = ", ".join(f"{name} (default)" if name == default else name for name in partitions) or "none"
        summary = f"Connected to {where}: {version}. Partitions you may use: {shown}."
        if accounts:
            summary += f" Accounts: {', '.join(accounts)}."
        for wanted in (self.partition or "").split(","):
            if wanted and partitions and wanted not in partitions:
                return False, (
                    f"{summary} But the connection's default partition {wanted!r} is not among them: "
                    "fix the connection's 'Default partition' or ask the site for access."
                )
        if self.account and accounts and self.account not in accounts:
            return False, (
                f"{summary} But the connection's default account {self.account!r} is not one of yours: "
                "Slurm would refuse every job charged to it."
            )
        return True, summary


# submit_job(transport, spec, batch_script, *, key, log_dir, env, max_concurrent_jobs=None) -> SubmitOutcome:
# adopt the live job of this task instance, or submit a new one, in one SSH round trip.
submit_job = over_ssh(slurm.submit_script, slurm.parse_submit_output, "sbatch", SLURM_REFUSALS)
