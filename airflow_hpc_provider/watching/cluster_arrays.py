"""The arrays of schedulers reached over SSH (Slurm, Grid Engine): what their elements share, how a
trigger stores its request, and the connection their submissions go over.

The collecting itself is the engine's (:mod:`~airflow_hpc_provider.watching.arrays`); a scheduler's
submitter (:mod:`~airflow_hpc_provider.watching.slurm_arrays`) renders and runs its scripts.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_hpc_provider.dialects.base import SchedulerDialect
from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport
from airflow_hpc_provider.jobs import JobKey
from airflow_hpc_provider.watching.arrays import ElementRequest
from airflow_hpc_provider.watching.cluster import PollerSettings, shared_poller


@dataclass(frozen=True)
class ClusterArrayGroup:
    """What the elements of one array on an SSH-reached cluster share: all but their commands."""

    conn_id: str
    head: str
    job_name: str
    log_dir: str
    # Values every element has under their names: a whole script by the user cannot take an
    # element's own values, so its tasks group by their env (a command takes each element's own).
    shared_env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    throttle: int | None = None
    # The longest an element waits for its siblings (``array_window``).
    window_s: float = 10.0

    @property
    def digest(self) -> str:
        """Names the group on the cluster (the array's comment or name). Env values stay out of
        it: a digest of a secret is still something of the secret on a command line."""
        names = (name for name, _ in self.shared_env)
        shared = (self.conn_id, self.head, self.job_name, self.log_dir, str(self.working_dir), str(self.throttle))
        identity = "\x1f".join((*shared, *names))
        return hashlib.sha256(identity.encode()).hexdigest()[:20]


@contextlib.asynccontextmanager
async def shared_connection(target: SshTarget, dialect: SchedulerDialect) -> AsyncIterator[SshTransport]:
    """The process's shared connection to the cluster (the poller's), for one round trip. The
    element triggers hold the poller from before they ask until their watch ends, so the
    submissions and the watching share one connection (see ClusterArrayElementTrigger)."""
    async with shared_poller(target, dialect, PollerSettings()) as poller:
        yield poller.transport


# --- as a trigger stores it -------------------------------------------------------------------------


def request_to_dict(request: ElementRequest) -> dict[str, Any]:
    """The request as JSON-plain fields (a trigger's kwargs, which Airflow stores encrypted)."""
    group: ClusterArrayGroup = request.group
    return {
        "head": group.head,
        "job_name": group.job_name,
        "log_dir": group.log_dir,
        "shared_env": [list(pair) for pair in group.shared_env],
        "env": [list(pair) for pair in request.env],
        "working_dir": group.working_dir,
        "throttle": group.throttle,
        "window_s": group.window_s,
        "task_digest": request.key.task_digest,
        "try_number": request.key.try_number,
        "command": request.command,
        "map_index": request.map_index,
        "siblings": request.siblings,
        "expected": request.expected,
    }


def request_from_dict(conn_id: str, data: Mapping[str, Any]) -> ElementRequest:
    group = ClusterArrayGroup(
        conn_id=conn_id,
        head=str(data["head"]),
        job_name=str(data["job_name"]),
        log_dir=str(data["log_dir"]),
        shared_env=tuple((str(name), str(value)) for name, value in data["shared_env"]),
        working_dir=None if data.get("working_dir") is None else str(data["working_dir"]),
        throttle=None if data.get("throttle") is None else int(data["throttle"]),
        window_s=float(data["window_s"]),
    )
    return ElementRequest(
        group=group,
        key=JobKey(task_digest=str(data["task_digest"]), try_number=int(data["try_number"])),
        command=str(data["command"]),
        map_index=int(data["map_index"]),
        env=tuple((str(name), str(value)) for name, value in data["env"]),
        siblings=str(data["siblings"]),
        expected=int(data["expected"]),
    )
