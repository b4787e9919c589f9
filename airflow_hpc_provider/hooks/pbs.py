"""The ``pbs`` connection type: a PBS Pro / OpenPBS or Torque login node reached over SSH."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_hpc_provider.config import BUILTIN_LOG_DIR, default_log_dir
from airflow_hpc_provider.dialects import pbs_qstat, pbs_submit
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.errors import ConnectionConfigError
from airflow_hpc_provider.hooks.probe import SchedulerProbe
from airflow_hpc_provider.hooks.refusals import PBS_REFUSALS
from airflow_hpc_provider.hooks.ssh import CommandResult, SshClusterHook, SshTransport, _number
from airflow_hpc_provider.hooks.submission import over_ssh
from airflow_hpc_provider.resources import check_name

DEFAULT_LOG_DIR = BUILTIN_LOG_DIR
_FLAVOURS = {"pbs_pro": PbsFlavour.PBS_PRO, "openpbs": PbsFlavour.PBS_PRO, "torque": PbsFlavour.TORQUE}


@dataclass(frozen=True)
class PbsClusterDefaults:
    queue: str | None = None
    account: str | None = None
    flavour: PbsFlavour | None = None  # None: ask the login node
    log_dir: str = DEFAULT_LOG_DIR
    poll_interval_s: float | None = None

    @classmethod
    def from_extra(cls, conn_id: str, extra: Mapping[str, Any]) -> PbsClusterDefaults:
        flavour_text = str(extra.get("flavour") or "").strip().lower()
        if flavour_text and flavour_text not in _FLAVOURS:
            raise ConnectionConfigError(
                f"connection {conn_id!r}: flavour={flavour_text!r}: use 'pbs_pro', 'torque', or leave it empty"
            )
        try:
            return cls(
                queue=check_name(extra.get("queue") or None, "queue"),
                account=check_name(extra.get("account") or None, "account"),
                flavour=_FLAVOURS.get(flavour_text),
                log_dir=str(extra.get("log_dir") or default_log_dir()),
                poll_interval_s=_number(extra, "poll_interval", 10.0) if extra.get("poll_interval") else None,
            )
        except ValueError as error:
            raise ConnectionConfigError(f"connection {conn_id!r}: {error}") from None


class PbsHook(SshClusterHook):
    """Reach a PBS cluster's login node over SSH (asyncssh), host keys verified by default.

    :param pbs_conn_id: an Airflow connection of type ``pbs`` (or the SSH provider's ``ssh``).
    """

    conn_name_attr = "pbs_conn_id"
    default_conn_name = "pbs_default"
    conn_type = "pbs"
    hook_name = "PBS / Torque (over SSH)"

    def __init__(self, pbs_conn_id: str = default_conn_name) -> None:
        super().__init__(pbs_conn_id)
        self.pbs_conn_id = pbs_conn_id

    def scheduler_probe(self, extra: Mapping[str, Any]) -> SchedulerProbe:
        return PbsProbe(queue=PbsClusterDefaults.from_extra(self.pbs_conn_id, extra).queue)


@dataclass(frozen=True)
class PbsProbe(SchedulerProbe):
    """The Test button's look at a PBS login node: which PBS it is and the queues it offers."""

    queue: str | None = None
    scheduler: str = "PBS"
    commands: tuple[str, ...] = ("qsub", "qstat", "qdel")

    def script(self) -> str:
        return self.commands_check() + pbs_qstat.FLAVOUR_PROBE + self.section("queues", "qstat -Q 2>&1")

    def judge(self, result: CommandResult, where: str) -> tuple[bool, str]:
        sections = self.sections(result.text)
        version_text = sections.get("", "")
        flavour = pbs_qstat.parse_flavour(version_text)
        version = next((line.strip() for line in version_text.splitlines() if "pbs_version" in line), "")
        what = f"PBS Pro / OpenPBS ({version})" if flavour is PbsFlavour.PBS_PRO else "Torque-style PBS"
        queues = _queue_names(sections.get("queues", ""))
        summary = f"Connected to {where}: {what}. Queues: {', '.join(queues) or 'none listed'}."
        if self.queue and queues and self.queue not in queues:
            return False, f"{summary} But the connection's default queue {self.queue!r} is not among them."
        return True, summary


def _queue_names(qstat_q: str) -> list[str]:
    """The first column of ``qstat -Q`` below its dashed rule (PBS Pro and Torque print the same table)."""
    lines = qstat_q.splitlines()
    rule = next((i for i, line in enumerate(lines) if line.startswith("---")), None)
    if rule is None:
        return []
    return [line.split()[0] for line in lines[rule + 1 :] if line.strip()]


async def detect_flavour(transport: SshTransport) -> PbsFlavour:
    """Ask the login node which PBS it runs (one round trip), for connections that leave it empty."""
    result = await transport.run(pbs_qstat.FLAVOUR_PROBE)
    return pbs_qstat.parse_flavour(result.text)


# submit_job(transport, spec, batch_script, flavour, *, key, log_dir, env) -> PbsSubmitOutcome
submit_job = over_ssh(pbs_submit.submit_script, pbs_submit.parse_submit_output, "qsub", PBS_REFUSALS)
