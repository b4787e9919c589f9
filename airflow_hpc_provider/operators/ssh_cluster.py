"""What an operator that submits a batch job over SSH knows of its cluster (:class:`ClusterSettings`,
read from the connection once per task) and what a submission returned (:class:`Submitted`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_hpc_provider.hooks.ssh import SshTarget


@dataclass(frozen=True)
class Submitted:
    """A submission's result. ``job_id`` None: nothing submitted, ``busy_jobs`` of ours already run.

    ``ended``: the adopted job had already finished (its worker died before watching it).
    """

    job_id: str | None
    adopted: bool
    state: str | None
    log_path: str = ""
    cursor_path: str = ""
    busy_jobs: int | None = None
    ended: bool = False


@dataclass(frozen=True)
class ClusterSettings:
    """What the operator needs from the connection: where it is and what it defaults to."""

    conn_id: str
    target: SshTarget
    partition: str | None
    account: str | None
    log_dir: str
    poll_interval_s: float | None
    login_shell: bool
    max_concurrent_jobs: int | None = None
    # The connection's extra as read once for this task (its env rules live there).
    extra: Mapping[str, Any] = field(default_factory=dict)
