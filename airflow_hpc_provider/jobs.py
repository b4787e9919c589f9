"""Value types shared by every batch system: what a job asks for and what became of it.

No I/O happens here. Dialects turn a :class:`JobSpec` into the batch system's script and commands
and turn its answers back into :class:`JobStatus`; the poller, triggers and operators only ever see
these types.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any


class JobState(enum.Enum):
    """The states every batch system's native states map onto.

    Each member's docstring says what it means across the systems (Slurm, PBS Pro/Torque, Grid
    Engine, tenants, AWS Batch, EC2 runners); the value is the member's name, which is what events
    and XCom carry.
    """

    _value_: str

    # Runs only while the class is built; afterwards JobState("RUNNING") looks a member up by value
    # (the default on ``doc`` is for type checkers, which read such a call as a call of __new__).
    def __new__(cls, value: str, doc: str = "") -> JobState:
        member = object.__new__(cls)
        member._value_ = value
        member.__doc__ = doc
        return member

    PENDING = "PENDING", "Queued, waiting for resources or its start time (Batch: submitted to starting)."
    HELD = "HELD", "Queued but kept from starting until someone or something releases it (a hold, an error hold)."
    RUNNING = "RUNNING", "Running: the job script (container, tenant, runner) has started."
    SUSPENDED = "SUSPENDED", "Started, then stopped in place by the scheduler or an admin; may resume."
    COMPLETING = "COMPLETING", "The script ended; the scheduler is still cleaning up or staging files out."
    REQUEUED = "REQUEUED", "Put back in the queue to run again from the start (its output file gets a new run)."
    COMPLETED = "COMPLETED", "Ended with exit status 0: the only success."
    FAILED = "FAILED", "Ended with a non-zero exit status, or was killed by a signal the job did not ask for."
    CANCELLED = "CANCELLED", "Removed by a user, an admin or this provider (scancel, qdel, TerminateJob)."
    TIMEOUT = "TIMEOUT", "Killed for running past its walltime (Slurm --time, PBS walltime, Grid Engine h_rt)."
    OUT_OF_MEMORY = "OUT_OF_MEMORY", "Killed for using more memory than it asked for (cgroup OOM, mem/vmem limit)."
    NODE_FAIL = "NODE_FAIL", "Ended because a node it ran on failed; the job itself may be fine."
    PREEMPTED = "PREEMPTED", "Stopped to make room for other work and not requeued (a spot reclaim on AWS)."
    BOOT_FAIL = "BOOT_FAIL", "Never started: its node (or instance) failed to boot."
    DEADLINE = "DEADLINE", "Never started or was stopped because its deadline passed (Slurm --deadline)."
    LOST = (
        "LOST",
        (
            "Known to nobody any more: neither the queue nor accounting has the job, past the grace period. "
            "Never a success."
        ),
    )
    UNKNOWN = "UNKNOWN", "A native state this provider does not know: logged once, and treated as still going."

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_success(self) -> bool:
        return self is JobState.COMPLETED


_TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.LOST,
    }
)


@dataclass(frozen=True)
class Resources:
    """What a job asks the scheduler for. ``None`` means "the cluster's default"."""

    partition: str | None = None
    account: str | None = None
    nodes: int | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    time_limit: timedelta | None = None
    gpus: int | None = None
    gres: str | None = None


@dataclass(frozen=True)
class JobSpec:
    """A job as the DAG author described it, validated, before any dialect renders it."""

    command: str
    job_name: str
    resources: Resources = field(default_factory=Resources)
    env_names: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    login_shell: bool = False
    working_dir: str | None = None
    extra_directives: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobKey:
    """Deterministic identity of one Airflow task instance's remote job.

    ``task_digest`` names the task instance (dag, task, run, map index) and is what a retry
    looks for to adopt a job a previous try left running; ``try_number`` is recorded beside it
    so an operator can tell the tries apart on the cluster.
    """

    task_digest: str
    try_number: int

    PREFIX = "airflow-hpc"

    @classmethod
    def for_task_instance(cls, dag_id: str, task_id: str, run_id: str, map_index: int, try_number: int) -> JobKey:
        # A digest keeps the key free of characters a shell or a scheduler field would mangle.
        identity = "\x1f".join((dag_id, task_id, run_id, str(map_index)))
        digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
        return cls(task_digest=digest, try_number=try_number)

    @property
    def tag(self) -> str:
        """The text stored with the job (Slurm comment, PBS variable) to find it again."""
        return f"{self.PREFIX}:{self.task_digest}:try{self.try_number}"

    @classmethod
    def task_digest_of(cls, tag: str) -> str | None:
        parts = tag.strip().split(":")
        if len(parts) == 3 and parts[0] == cls.PREFIX:
            return parts[1]
        return None


@dataclass(frozen=True)
class JobStatus:
    """One observation of a job, in shared terms, with the native words kept for the log."""

    job_id: str
    state: JobState
    native_state: str
    reason: str | None = None
    nodes: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    elapsed: timedelta | None = None
    max_rss_mb: float | None = None

    def describe(self) -> str:
        """``RUNNING on node01``, ``PENDING (Resources)``: what a person reading the log wants."""
        text = self.state_words
        if self.state is JobState.RUNNING and self.nodes:
            text += f" on {self.nodes}"
        if self.reason and self.reason not in ("None", "(null)"):
            text += f" ({self.reason})"
        return text

    @property
    def state_words(self) -> str:
        """The native state, spelled out when it is a letter (PBS): ``RUNNING (R)``."""
        if len(self.native_state) <= 2 and self.native_state != self.state.value:
            return f"{self.state.value} ({self.native_state})"
        return self.native_state

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state.value,
            "native_state": self.native_state,
            "reason": self.reason,
            "nodes": self.nodes,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "elapsed_s": None if self.elapsed is None else self.elapsed.total_seconds(),
            "max_rss_mb": self.max_rss_mb,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobStatus:
        elapsed_s = data.get("elapsed_s")
        return cls(
            job_id=str(data["job_id"]),
            state=JobState(data["state"]),
            native_state=str(data["native_state"]),
            reason=data.get("reason"),
            nodes=data.get("nodes"),
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
            elapsed=None if elapsed_s is None else timedelta(seconds=float(elapsed_s)),
            max_rss_mb=data.get("max_rss_mb"),
        )


@dataclass(frozen=True)
class LogChunk:
    """Bytes of a job's output file from ``offset`` on; ``size`` is the file's size when read."""

    job_id: str
    offset: int
    data: bytes
    size: int

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True)
class WatchedJob:
    """What the poller needs to follow one job: its id and where its output lands.

    ``claimed_by_trigger``: a trigger watches it, so the poller leaves :func:`claim_marker` beside
    the cursor. A later try of the task must then submit afresh rather than adopt the job (the
    task was cleared or failed while deferred, and the old trigger's on_kill is cancelling it);
    a job no trigger ever watched is one a crashed worker left, and that one is adopted.
    """

    job_id: str
    log_path: str
    cursor_path: str
    claimed_by_trigger: bool = False


def claim_marker(cursor_path: str) -> str:
    return cursor_path + ".watched"


# Linux signal numbers (x86, ARM; the clusters this provider reaches), fixed here rather than read from
# the host's own ``signal`` module: Airflow may run on macOS, where SIGUSR1 is 30, not 10.
_SIGNAL_NAMES: Mapping[int, str] = {
    1: "SIGHUP",
    2: "SIGINT",
    3: "SIGQUIT",
    4: "SIGILL",
    5: "SIGTRAP",
    6: "SIGABRT",
    7: "SIGBUS",
    8: "SIGFPE",
    9: "SIGKILL",
    10: "SIGUSR1",
    11: "SIGSEGV",
    12: "SIGUSR2",
    13: "SIGPIPE",
    14: "SIGALRM",
    15: "SIGTERM",
    16: "SIGSTKFLT",
    17: "SIGCHLD",
    18: "SIGCONT",
    19: "SIGSTOP",
    20: "SIGTSTP",
    21: "SIGTTIN",
    22: "SIGTTOU",
    23: "SIGURG",
    24: "SIGXCPU",
    25: "SIGXFSZ",
    26: "SIGVTALRM",
    27: "SIGPROF",
    28: "SIGWINCH",
    29: "SIGIO",
    30: "SIGPWR",
    31: "SIGSYS",
}
_SIGNAL_MAX = 64  # the real-time signals end here; a larger "signal" is some other number


def signal_name(number: int) -> str:
    """``9`` -> ``SIGKILL``; real-time signals as ``SIGRTMIN+n``."""
    if number in _SIGNAL_NAMES:
        return _SIGNAL_NAMES[number]
    if 34 <= number <= _SIGNAL_MAX:
        return f"SIGRTMIN+{number - 34}"
    return f"signal {number}"


def is_signal(number: int | None) -> bool:
    return number is not None and 1 <= number <= _SIGNAL_MAX


def signal_of_shell_status(code: int | None) -> int | None:
    """The signal behind a shell-style exit status ``128 + N`` (a shell, Docker, srun), else None.

    Only the numbered signals up to 31 count: ``exit 200`` is more likely a program's own code
    than real-time signal 72 - 128.
    """
    if code is not None and 129 <= code <= 128 + 31:
        return code - 128
    return None


def describe_exit(exit_code: int | None, signal: int | None) -> str:
    """How a job's command ended, in the words of every summary line of every backend.

    ``killed by signal 9 (SIGKILL)`` when a signal ended it (the dialect decides when a number
    means a signal, e.g. ``128 + N`` from a shell); otherwise ``exit 3`` (``signal`` None),
    ``exit 3:0`` (the ``code:signal`` pair Slurm and PBS report), or ``exit unknown``.
    """
    if is_signal(signal):
        assert signal is not None
        return f"killed by signal {signal} ({signal_name(signal)})"
    if exit_code is None:
        return "exit unknown"
    if signal is None:
        return f"exit {exit_code}"
    return f"exit {exit_code}:{signal}"


def format_duration(value: timedelta | None) -> str:
    """``01:02:03`` or ``2-01:02:03``: the form schedulers and their users read."""
    if value is None:
        return "unknown"
    total = int(value.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{days}-{clock}" if days else clock
