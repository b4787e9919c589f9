"""How a PBS job ended when qstat cannot say: the exit-status records its script leaves, and, for
the Torque-compatible wrappers around Slurm, Slurm's own accounting.

Some PBS front ends never report an exit status: the Slurm-backed wrappers (Debian
``slurm-wlm-torque``) show a finished job as ``C`` with none at all, and qstat forgets finished
jobs after a while. So the batch script records its own end in ``<exit_dir>/<short job id>``
(:func:`exit_recorder`), and the poll reads those files (:func:`exits_section`). Only Slurm's
accounting can tell a wrapper job's qdel from a walltime kill, or name the signal of a script
killed outright (:func:`accounting_section`). Pure functions, like every dialect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from airflow_hpc_provider.dialects import remote_shell, slurm_status
from airflow_hpc_provider.dialects.pbs_qstat import checked_id, short_id
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.jobs import JobState, JobStatus, signal_of_shell_status

# --- the script's own record --------------------------------------------------------------------


def exit_recorder(exit_dir: str) -> str:
    """Shell lines that write how the script ended to ``<exit_dir>/<short job id>``, atomically.

    The file holds the exit status (``3``), the status and the signal the script itself received
    (``143 TERM``: a qdel or a walltime kill, which the scheduler sends to the batch shell), or
    ``array`` (the job is an element of a job array, which is refused: it runs nothing).

    The termination signals get traps of their own: on a walltime kill or a qdel, bash would
    otherwise run the EXIT trap with a status of 0 (seen on the test cluster), and a killed job
    would be recorded as a success. Those traps only run because the payload runs in the
    background (:func:`in_background`): a shell waiting for a foreground command runs a trap only
    once that command ends, and the scheduler's SIGKILL comes first. A trapped signal is recorded
    first, then passed on to the payload, which gets until the scheduler's SIGKILL to finish. A
    SIGKILL of the script itself records nothing: the scheduler's own record decides then.
    """
    directory = remote_shell.home_relative(exit_dir)
    return (
        "_airflow_hpc_exit() {\n"
        '  _f="${PBS_JOBID%%.*}"\n'
        f'  mkdir -p -- {directory} && printf \'%s\\n\' "$1" > {directory}/"$_f.tmp" \\\n'
        f'    && mv -f -- {directory}/"$_f.tmp" {directory}/"$_f"\n'
        "}\n"
        "_airflow_hpc_signal() {\n"
        "  trap - EXIT\n"
        '  _airflow_hpc_exit "$2 $1"\n'
        '  if [ -n "${_airflow_hpc_child:-}" ]; then kill -s "$1" "$_airflow_hpc_child" 2>/dev/null; wait; fi\n'
        '  exit "$2"\n'
        "}\n"
        "trap '_airflow_hpc_exit $?' EXIT\n"
        "trap '_airflow_hpc_signal HUP 129' HUP\n"
        "trap '_airflow_hpc_signal INT 130' INT\n"
        "trap '_airflow_hpc_signal TERM 143' TERM\n"
        # Torque, PBS Pro and the Slurm-backed wrappers name an array element's index thus.
        'if [ -n "${PBS_ARRAYID:-}${PBS_ARRAY_INDEX:-}${SLURM_ARRAY_TASK_ID:-}" ]; then\n'
        '  echo "airflow-hpc: job ${PBS_JOBID:-} is an element of a job array, which this provider does not run" >&2\n'
        "  trap - EXIT; _airflow_hpc_exit array; exit 1\n"
        "fi\n"
    )


def in_background(payload: str) -> str:
    """The payload as a background job the script waits for, so the script's traps run at once.

    It stays in the script's own shell (a subshell of it): ``exit`` leaves the payload with its
    status, which the script then exits with; ``$$`` is still the script's process.
    """
    body = payload if payload.endswith("\n") else payload + "\n"
    return "{\n" + body + "} &\n" + "_airflow_hpc_child=$!\n" + 'wait "$_airflow_hpc_child"\n'


def exit_dir(log_dir: str) -> str:
    return f"{log_dir.rstrip('/')}/exit"


def exits_section(token: str, job_ids: Sequence[str], directory: str) -> str:
    """Print ``<short id> <status>`` for every job whose script recorded its exit status."""
    shorts = " ".join(quote(short_id(checked_id(job_id))) for job_id in job_ids)
    folder = remote_shell.home_relative(directory)
    loop = f'for _i in {shorts}; do [ -f {folder}/"$_i" ] && printf \'%s %s\\n\' "$_i" "$(cat {folder}/"$_i")"; done'
    return remote_shell.section(token, "exits", loop)


@dataclass(frozen=True)
class RecordedExit:
    """What a job's script wrote in its exit-status file (see :func:`exit_recorder`)."""

    code: int | None
    trapped: str | None = None  # the signal the script itself received: HUP, INT or TERM
    array_element: bool = False

    @classmethod
    def parse(cls, text: str) -> RecordedExit | None:
        words = text.split()
        if words == ["array"]:
            return cls(code=None, array_element=True)
        if not words or not words[0].lstrip("-").isdigit():
            return None
        trapped = words[1] if len(words) > 1 and words[1].isalpha() else None
        return cls(code=int(words[0]), trapped=trapped)


def parse_exits(text: str) -> dict[str, RecordedExit]:
    recorded: dict[str, RecordedExit] = {}
    for line in text.splitlines():
        short, _, rest = line.strip().partition(" ")
        seen = RecordedExit.parse(rest)
        if seen is not None:
            recorded[short] = seen
    return recorded


ARRAY_ELEMENT_REASON = (
    "job array: the job is an element of a job array, which this provider refuses (it follows "
    "single jobs and never reports a success on one element's word); the element ran nothing"
)


def with_recorded_exit(status: JobStatus, recorded: RecordedExit | int | None) -> JobStatus:
    """A finished job qstat gave no exit status for, completed by what its script recorded."""
    if isinstance(recorded, int):
        recorded = RecordedExit(code=recorded)
    if recorded is None or status.exit_code is not None or status.state is not JobState.FAILED:
        return status
    if recorded.array_element:
        return JobStatus(**{**status.__dict__, "state": JobState.FAILED, "reason": ARRAY_ELEMENT_REASON})
    code = recorded.code
    assert code is not None
    signal = signal_of_shell_status(code)
    state = JobState.COMPLETED if code == 0 else JobState.FAILED
    if code == 0:
        reason = None
    elif recorded.trapped:
        # The scheduler signals the batch shell on a qdel or a time limit; which one, only its own
        # record says (read where there is one: see PbsDialect).
        reason = f"the job's script received SIG{recorded.trapped} (a qdel or a time limit)"
    elif signal:
        reason = "the job's command was killed by a signal"
    else:
        reason = "exit status recorded by the job's script"
    return JobStatus(**{**status.__dict__, "state": state, "exit_code": code, "signal": signal, "reason": reason})


def is_array_element(status: JobStatus) -> bool:
    return status.reason == ARRAY_ELEMENT_REASON


# --- the Slurm-backed wrappers: Slurm's own record ------------------------------------------------

_ACCOUNTING_FIELDS = "JobIDRaw,State,ExitCode,Elapsed"


def accounting_section(token: str, job_ids: Sequence[str]) -> str:
    """sacct for jobs of the Slurm-backed wrappers whose end the wrapper's qstat cannot tell.

    Their ids are Slurm job ids; without sacct (a real Torque) the section says so and the exit
    status file alone decides.
    """
    ids = ",".join(checked_id(job_id) for job_id in job_ids)
    command = (
        "command -v sacct >/dev/null 2>&1 || { echo 'no sacct'; exit 127; }; "
        f"sacct -n -P -X -j {quote(ids)} -o {_ACCOUNTING_FIELDS}"
    )
    return remote_shell.section(token, "accounting", command)


@dataclass(frozen=True)
class SlurmRecord:
    state: JobState
    native_state: str
    exit_code: int | None
    signal: int | None
    elapsed: timedelta | None


def parse_accounting(text: str) -> dict[str, SlurmRecord]:
    records: dict[str, SlurmRecord] = {}
    for line in text.splitlines():
        fields = [part.strip() for part in line.split("|")]
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        code, signal = slurm_status.parse_exit_code(fields[2])
        state = slurm_status.map_state(fields[1].split(" ")[0])
        records[fields[0]] = SlurmRecord(state, fields[1], code, signal, slurm_status.parse_elapsed(fields[3]))
    return records


def with_slurm_record(status: JobStatus, record: SlurmRecord) -> JobStatus:
    """A wrapper job's end as Slurm recorded it (``CANCELLED by 1001``, ``TIMEOUT``, ``FAILED 0:9``).

    Slurm's COMPLETED counts only when the script recorded no signal of its own; what the script
    recorded (its exit status, a trapped signal) stays the exit shown, as it is the more precise.
    """
    state = record.state
    if state is JobState.COMPLETED and status.exit_code not in (None, 0):
        state = JobState.FAILED
    exit_code, signal = status.exit_code, status.signal
    if exit_code is None:
        exit_code, signal = record.exit_code, record.signal
    return JobStatus(
        **{
            **status.__dict__,
            "state": state,
            "exit_code": exit_code,
            "signal": signal,
            "reason": None if state.is_success else f"{record.native_state} in Slurm's accounting",
            "elapsed": status.elapsed or record.elapsed,
        }
    )


def forgotten(job_id: str, code: RecordedExit | int) -> JobStatus:
    """A job qstat no longer shows, known only by the exit status its script recorded."""
    status = JobStatus(
        job_id=job_id,
        state=JobState.FAILED,
        native_state="F",
        reason="finished; qstat no longer shows it, so the exit status is the one its script recorded",
    )
    recorded = with_recorded_exit(status, code)
    return recorded if recorded.state is not JobState.COMPLETED else replace(recorded, reason=status.reason)
