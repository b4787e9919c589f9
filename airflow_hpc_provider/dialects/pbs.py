"""PBS, as pure functions, for two flavours: PBS Pro / OpenPBS and Torque: the batch script, a
job's names and paths, cancel, and the dialect the poller uses.

Nothing here does I/O, so every function is tested with golden files and recorded command output.
The shape follows :mod:`airflow_hpc_provider.dialects.slurm`. The family:

* this module: render the batch script, name the job and its files, cancel, and
  :class:`PbsDialect`, which builds one poll for many ids and reads it;
* :mod:`~airflow_hpc_provider.dialects.pbs_submit`: the one-round-trip submit script;
* :mod:`~airflow_hpc_provider.dialects.pbs_qstat`: the flavour, and reading qstat's answers;
* :mod:`~airflow_hpc_provider.dialects.pbs_exits`: the exit-status records a script leaves, and
  the Slurm-backed wrappers' accounting.

Facts this module relies on:

* PBS Pro: the output file named by ``-o`` is often only staged back when the job ends, so on PBS
  Pro the log usually arrives at completion rather than streaming while the job runs.
* The Torque-compatible wrappers around Slurm (Debian ``slurm-wlm-torque``): ``#PBS`` lines in the
  script are read by sbatch, except ``-o``/``-e``, which the wrapper always passes on the command
  line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta

from airflow_hpc_provider.dialects import remote_shell, slurm_status
from airflow_hpc_provider.dialects.base import Observation, PollReport
from airflow_hpc_provider.dialects.directives import (
    checked_extra_directives,
    default_shebang,
    is_posix_shell,
    split_user_script,
)
from airflow_hpc_provider.dialects.pbs_exits import (
    RecordedExit,
    accounting_section,
    exit_dir,
    exit_recorder,
    exits_section,
    forgotten,
    in_background,
    parse_accounting,
    parse_exits,
    with_recorded_exit,
    with_slurm_record,
)
from airflow_hpc_provider.dialects.pbs_qstat import (
    PbsFlavour,
    checked_id,
    parse_poll,
    poll_script,
    short_id,
    slurm_name,
)
from airflow_hpc_provider.dialects.remote_shell import LogRead, quote
from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.dialects.slurm import cancel_script as slurm_cancel_script
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobState, JobStatus, signal_of_shell_status

# Options this provider owns: it must know the job name (the key), where output goes (to stream
# it), how the environment travels, and which shell runs the script.
RESERVED_OPTIONS = ("-N", "-o", "-e", "-j", "-k", "-v", "-V", "-S")

# Job names: PBS Pro allows 236 characters, letters first; we keep well inside that, and inside
# what a qstat -f line holds unwrapped, and only characters no wrapper shell can misread.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_NAME_BASE_MAX = 32


# --- the batch script -------------------------------------------------------------------------


def render_script(spec: JobSpec, flavour: PbsFlavour, *, script: str | None = None, exit_dir: str | None = None) -> str:
    """The batch script: shebang, ``#PBS`` resource lines, env names, working dir, setup, command.

    With ``exit_dir``, a shell script also records its own exit status in ``<exit_dir>/<job id>``
    (written atomically when the script exits): some PBS front ends, such as the Slurm-backed
    Torque wrappers, never report one, and a finished job without it cannot count as a success.

    ``script`` (a whole script by the user) keeps its shebang and its own ``#PBS`` lines; ours go
    right after the shebang (PBS reads directives only before the first command), and the setup
    lines go after the script's directive block. Options given to ``qsub`` on the command line
    (name, output, environment) win over any ``#PBS`` line with the same option.
    """
    directives = [f"#PBS {option}\n" for option in resource_options(spec, flavour)]
    env_note = (
        f"# environment from Airflow (values exported to qsub, not written here): {' '.join(spec.env_names)}\n"
        if spec.env_names
        else ""
    )
    # PBS Pro has no qsub option for the working directory (jobs start in $HOME) and the wrapper's
    # -wd would go through its shell unquoted, so the script changes directory itself.
    chdir = f"cd -- {remote_shell.home_relative(spec.working_dir)} || exit 1\n" if spec.working_dir else ""
    setup = "".join(f"{line}\n" for line in spec.setup)
    if script is None:
        body = spec.command if spec.command.endswith("\n") else spec.command + "\n"
        shebang = default_shebang(spec.login_shell)
        if not exit_dir:
            return shebang + "".join(directives) + env_note + chdir + setup + body
        payload = chdir + setup + body
        return shebang + "".join(directives) + env_note + exit_recorder(exit_dir) + in_background(payload)
    shebang, header, rest = split_user_script(script, spec.login_shell)
    # Only a POSIX-family shell understands the trap; another interpreter's exit stays unknown.
    if not (exit_dir and is_posix_shell(shebang)):
        return shebang + "".join(directives) + header + env_note + chdir + setup + rest
    payload = chdir + setup + rest
    return shebang + "".join(directives) + header + env_note + exit_recorder(exit_dir) + in_background(payload)


def resource_options(spec: JobSpec, flavour: PbsFlavour) -> list[str]:
    """The ``#PBS`` options for the spec's resources, then the author's extra directives.

    Memory is per node, as in the Slurm dialect: a PBS Pro chunk's ``mem`` is per chunk (one chunk
    per node), Torque's ``mem`` is for the whole job, so Torque gets memory times nodes. CPUs and
    GPUs are per node here (``ncpus``/``ngpus`` per chunk, ``ppn``/``gpus`` per node).
    """
    res = spec.resources
    if res.gres:
        raise JobSpecError(
            f"gres={res.gres!r} is a Slurm request; on PBS give the resource in extra_directives, "
            "for example '-l select=1:ngpus=2' or '-l nodes=1:gpus=2'"
        )
    if res.partition and "," in res.partition:
        raise JobSpecError(f"partition={res.partition!r}: a PBS job goes to one queue, not a list")
    options: list[str] = []
    if res.partition:
        options.append(f"-q {res.partition}")
    if res.account:
        options.append(f"-A {res.account}")
    nodes = res.nodes or 1
    if flavour is PbsFlavour.PBS_PRO:
        if res.nodes or res.cpus or res.memory_mb or res.gpus:
            chunk = f"select={nodes}"
            if res.cpus:
                chunk += f":ncpus={res.cpus}"
            if res.memory_mb:
                chunk += f":mem={res.memory_mb}mb"
            if res.gpus:
                chunk += f":ngpus={res.gpus}"
            options.append(f"-l {chunk}")
    else:
        if res.nodes or res.cpus or res.gpus:
            request = f"nodes={nodes}"
            if res.cpus:
                request += f":ppn={res.cpus}"
            if res.gpus:
                request += f":gpus={res.gpus}"
            options.append(f"-l {request}")
        if res.memory_mb:
            options.append(f"-l mem={res.memory_mb * nodes}mb")
    if res.time_limit:
        options.append(f"-l walltime={pbs_walltime(res.time_limit)}")
    options.extend(checked_extra_directives(spec.extra_directives, RESERVED_OPTIONS))
    return options


def pbs_walltime(limit: timedelta) -> str:
    """``HH:MM:SS`` with as many hours as it takes (``36:00:00``): PBS has no day field."""
    total = max(1, int(limit.total_seconds()))
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}"


# --- names and paths --------------------------------------------------------------------------


def job_name(spec: JobSpec, key: JobKey) -> str:
    """``<name>-<task digest>-try<n>``: the job name carries the key.

    Why the name and not a variable: the name is the one attribute every ``qstat -f`` shows (PBS
    Pro, Torque, and the Slurm-backed wrapper, whose ``qstat -f`` has no Variable_List), and it
    can be read back with one qstat call. The author's name is reduced to letters, digits, ``_``,
    ``.`` and ``-`` (PBS rejects others, and the wrapper would hand them to a shell) and cut short.
    The full tag also travels to the job as ``$AIRFLOW_HPC_KEY``.
    """
    return f"{name_base(spec.job_name)}-{key.task_digest}-try{key.try_number}"


def name_base(name: str) -> str:
    """The author's job name as PBS and the wrappers' shell take it: letters first, safe characters."""
    base = _NAME_UNSAFE.sub("_", name)[:_NAME_BASE_MAX] or "job"
    if not base[0].isalpha():
        base = "j" + base[: _NAME_BASE_MAX - 1]
    return base


def log_path(log_dir: str, task_digest: str, try_number: int) -> str:
    """Where a try's output lands. PBS cannot put the job id in ``-o``, so the try names it."""
    return f"{log_dir.rstrip('/')}/{task_digest}-try{try_number}.log"


def cursor_path(log_dir: str, task_digest: str, try_number: int) -> str:
    return f"{log_dir.rstrip('/')}/{task_digest}-try{try_number}.cursor"


def script_path(log_dir: str, key: JobKey) -> str:
    return f"{log_dir.rstrip('/')}/{key.task_digest}-try{key.try_number}.pbs"


def jobs_record(log_dir: str, task_digest: str) -> str:
    """The task instance's submissions, ``<job id> <try>`` a line, appended by the submit script."""
    return f"{log_dir.rstrip('/')}/{task_digest}.jobs"


def cancel_script(job_ids: Sequence[str], flavour: PbsFlavour | None = None) -> str:
    """``qdel`` of the ids; an array element of the Slurm-backed wrappers goes to ``scancel`` by its
    Slurm name (their qdel reads ``123[4]`` as 123 and deletes the whole array)."""
    wrapped = {job_id: slurm_name(job_id) for job_id in job_ids} if flavour is PbsFlavour.TORQUE else {}
    elements = [name for name in wrapped.values() if name is not None]
    others = [job_id for job_id in job_ids if wrapped.get(job_id) is None]
    script = "qdel " + " ".join(quote(checked_id(job_id)) for job_id in others) + "\n" if others else ""
    if elements:
        script += slurm_cancel_script(elements)
    return script


class PbsDialect:
    """The PBS dialect as the poller sees it, for one flavour and one connection's log directory."""

    name = "PBS"

    def __init__(self, flavour: PbsFlavour, log_dir: str) -> None:
        self.flavour = flavour
        self.log_dir = log_dir
        # Wrapper jobs that finished with their end unknown or signalled: the next poll asks sacct.
        self._ask_slurm: set[str] = set()
        # The wrappers' array elements are Slurm's to tell (squeue, then sacct).
        self._slurm = SlurmDialect()

    def _wrapper_elements(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The ids of array elements of the Slurm-backed wrappers, by their Slurm names (see
        :func:`~airflow_hpc_provider.dialects.pbs_qstat.slurm_name`)."""
        if self.flavour is not PbsFlavour.TORQUE:
            return {}
        return {name: job_id for job_id in job_ids if (name := slurm_name(job_id)) is not None}

    def poll_script(self, token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str:
        if not job_ids:
            return remote_shell.poll_script(token, "", reads)
        elements = self._wrapper_elements(job_ids)
        queued = [job_id for job_id in job_ids if job_id not in elements.values()]
        script = poll_script(token, queued, [], self.flavour) if queued else remote_shell.poll_script(token, "", [])
        if elements:
            # The wrappers' qstat cannot name an element: Slurm is asked by the element's name.
            script += slurm_status.poll_body(token, list(elements))
        script += exits_section(token, job_ids, exit_dir(self.log_dir))
        asked = [job_id for job_id in job_ids if job_id in self._ask_slurm]
        if asked:
            script += accounting_section(token, asked)
        return script + remote_shell.log_reads(token, reads)

    def read_poll(self, sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str]) -> PollReport:
        elements = self._wrapper_elements(job_ids)
        queued = [job_id for job_id in job_ids if job_id not in elements.values()]
        observations: dict[str, Observation] = {}
        notices: tuple[str, ...] = ()
        if elements:
            report = self._slurm.read_poll(sections, list(elements))
            if report.failure:
                return report
            notices = report.notices
            for name, seen in report.observations.items():
                status = None if seen.status is None else replace(seen.status, job_id=elements[name])
                observations[elements[name]] = replace(seen, status=status)
        if not queued:
            return PollReport(observations=observations, notices=notices)
        queued_report = self._read_qstat(sections, queued)
        if queued_report.failure:
            return queued_report
        return PollReport(
            observations={**observations, **queued_report.observations}, notices=notices + queued_report.notices
        )

    def _read_qstat(self, sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str]) -> PollReport:
        poll = parse_poll(sections, job_ids, self.flavour)
        if poll.errors and not poll.statuses:
            return PollReport(observations={}, failure="; ".join(poll.errors))
        exits = parse_exits(sections.get("exits", (0, ""))[1])
        accounting_rc, accounting_text = sections.get("accounting", (None, ""))
        records = parse_accounting(accounting_text) if accounting_rc == 0 else {}
        observations: dict[str, Observation] = {}
        for job_id in job_ids:
            status = poll.statuses.get(job_id)
            if status is None:
                code = exits.get(short_id(job_id))
                # qstat forgot a finished job (an adopted one, ended long ago): its script's own
                # record of how it ended is the answer. Without one, absent stays absent (LOST later).
                observations[job_id] = (
                    Observation(None, final=False) if code is None else Observation(forgotten(job_id, code), final=True)
                )
                continue
            recorded = exits.get(short_id(job_id))
            seen = with_recorded_exit(status, recorded)
            if not self._slurm_may_tell(job_id, status, recorded):
                observations[job_id] = Observation(seen, final=seen.state.is_terminal)
                continue
            # Only Slurm's accounting can tell a qdel from a walltime kill, or name the signal of
            # a script killed outright. Asked in the next poll; the poller waits for it (within its
            # grace for the squeue -> sacct gap), and without sacct the recorded end stands.
            record = records.get(job_id)
            if accounting_rc is None or (accounting_rc == 0 and (record is None or not record.state.is_terminal)):
                self._ask_slurm.add(job_id)
                observations[job_id] = Observation(seen, final=False)
                continue
            self._ask_slurm.discard(job_id)
            final = seen if record is None or not record.state.is_terminal else with_slurm_record(seen, record)
            observations[job_id] = Observation(final, final=True)
        return PollReport(observations=observations, notices=poll.errors)

    def _slurm_may_tell(self, job_id: str, status: JobStatus, recorded: RecordedExit | None) -> bool:
        """A finished job of the Slurm-backed wrappers (bare ids; Torque's carry a server name)
        whose qstat has no exit status and whose script recorded nothing, or a signal."""
        if self.flavour is not PbsFlavour.TORQUE or not job_id.isdigit():
            return False
        if status.state is not JobState.FAILED or status.exit_code is not None:
            return False
        if recorded is None:
            return True
        return not recorded.array_element and (
            recorded.trapped is not None or signal_of_shell_status(recorded.code) is not None
        )

    def cancel_script(self, job_ids: Sequence[str]) -> str:
        return cancel_script(job_ids, self.flavour)
