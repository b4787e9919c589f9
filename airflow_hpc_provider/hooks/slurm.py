"""The ``slurm`` connection type: a login node reached over SSH, plus the cluster's defaults.

Submission, cancellation and reading a job's output are one SSH round trip each, through
:class:`~airflow_hpc_provider.hooks.ssh.SshTransport`. Watching goes through the shared poller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_hpc_provider.dialects import slurm
from airflow_hpc_provider.errors import ConnectionConfigError, SubmissionError
from airflow_hpc_provider.hooks.ssh import SshClusterHook, SshTransport, _number
from airflow_hpc_provider.jobs import JobKey, JobSpec
from airflow_hpc_provider.resources import check_name

DEFAULT_LOG_DIR = ".airflow-hpc/logs"


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
        log_dir = str(extra.get("log_dir") or DEFAULT_LOG_DIR)
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


async def submit_job(
    transport: SshTransport,
    spec: JobSpec,
    batch_script: str,
    *,
    key: JobKey,
    log_dir: str,
    env: Mapping[str, str],
    max_concurrent_jobs: int | None = None,
) -> slurm.SubmitOutcome:
    """Adopt the live job of this task instance, or submit a new one: one SSH round trip."""
    script = slurm.submit_script(
        spec, batch_script, key=key, log_dir=log_dir, env=env, max_concurrent_jobs=max_concurrent_jobs
    )
    result = await transport.run(script)
    if result.exit_status != 0:
        raise SubmissionError("sbatch", transport.target.where, result.exit_status, result.error_text)
    try:
        return slurm.parse_submit_output(result.text)
    except ValueError as error:
        raise SubmissionError("sbatch", transport.target.where, result.exit_status, str(error)) from None
