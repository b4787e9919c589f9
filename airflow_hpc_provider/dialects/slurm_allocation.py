"""Allocations for tenants: one long Slurm batch job whose main process is a tmux server, booked,
found and released by name, as pure functions.

An *allocation* is an ordinary batch job whose main process is a tmux server on a private socket
(``tmux -L airflow-hpc-<job id> -D``). It is found by its *reservation*, a friendly name stored as
the Slurm job name, and recognised as ours by its comment. What runs inside it (the *tenants*) is
in :mod:`airflow_hpc_provider.dialects.slurm_tenant`.

Facts this relies on (Slurm 22.05, tmux 3.3a, checked on the test cluster):

* ``tmux -D`` runs the server in the foreground with ``exit-empty`` off: it outlives its sessions,
  and ``list-sessions`` on it exits 0 with no session at all; without a server it exits 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_hpc_provider.dialects import remote_shell, slurm
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobSpec

# The comment of an allocation booked by this provider: the promise that a tmux server runs in it.
ALLOCATION_TAG = "airflow-hpc-allocation:v1"
SOCKET_PREFIX = "airflow-hpc-"

# Reservation names become the Slurm job name and part of file names: keep them tame.
_RESERVATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

# States in which an allocation can still host its tenants (or will again, once it runs).
_ALIVE = "PENDING,CONFIGURING,RUNNING,SUSPENDED,REQUEUED,REQUEUE_HOLD,REQUEUE_FED,RESIZING,STOPPED"


def check_reservation(name: object, argument: str = "reservation") -> str:
    if not isinstance(name, str) or not _RESERVATION.fullmatch(name):
        raise JobSpecError(
            f"{argument}={name!r} is not a reservation name: 1-100 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


def socket_name(allocation_id: str) -> str:
    """One socket per allocation job: a resubmitted allocation may share the node with the old one."""
    return f"{SOCKET_PREFIX}{allocation_id}"


def allocation_dir(log_dir: str, reservation: str) -> str:
    return f"{log_dir.rstrip('/')}/allocations/{reservation}"


# --- booking --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllocationSpec:
    """An allocation as the DAG author asked for it."""

    reservation: str
    job: JobSpec  # resources, setup lines, login shell; its command is not used
    persistent_lead_s: int | None = None  # resubmit this many seconds before the time limit


def render_allocation_script(spec: AllocationSpec, *, log_dir: str) -> str:
    """The allocation's batch script: its main process is the tmux server that holds the allocation.

    A persistent allocation resubmits the very file it was booked from (so a successor asks for
    what the first booking asked); its paths are written as shell words relative to ``$HOME``.
    """
    directives = [f"#SBATCH {option}\n" for option in slurm.resource_options(spec.job)]
    if spec.persistent_lead_s is not None:
        directives.append(f"#SBATCH --signal=B:USR1@{int(spec.persistent_lead_s)}\n")
    shebang = "#!/bin/bash -l\n" if spec.job.login_shell else "#!/bin/bash\n"
    setup = "".join(f"{line}\n" for line in spec.job.setup)
    # -f /dev/null: a user's ~/.tmux.conf must not change how sessions behave (e.g. remain-on-exit).
    server = 'tmux -L "airflow-hpc-$SLURM_JOB_ID" -f /dev/null -D'
    if spec.persistent_lead_s is None:
        # exec: the tmux server itself is the batch step's main process; when it goes, the job ends.
        body = f"exec {server}\n"
    else:
        # Bash runs a trap only between foreground commands, so the server runs in the background
        # and the script waits; wait returns early (status > 128) whenever a trap ran.
        body = (
            "_resubmit() {\n"
            "  trap '' USR1  # Slurm may signal again; one successor is enough\n"
            f"  _next=$({sbatch_words(spec.reservation, log_dir)}) && "
            'echo "allocation $SLURM_JOB_ID: walltime near, resubmitted as $_next"\n'
            "}\n"
            "trap _resubmit USR1\n"
            f"{server} &\n"
            "_server=$!\n"
            'while :; do wait "$_server"; _rc=$?; kill -0 "$_server" 2>/dev/null || break; done\n'
            'exit "$_rc"\n'
        )
    return shebang + "".join(directives) + setup + body


def sbatch_words(reservation: str, log_dir: str) -> str:
    """The sbatch command that books (and rebooks) an allocation from its saved script."""
    directory = allocation_dir(log_dir, reservation)
    return (
        f"sbatch --parsable --job-name={quote(reservation)} --comment={quote(ALLOCATION_TAG)} "
        f"--output={remote_shell.home_relative(directory + '/allocation-%j.out')} "
        f"{remote_shell.home_relative(directory + '/allocation.sbatch')}"
    )


def allocation_lookup(name_arg: str) -> str:
    """Shell that sets ``_j``/``_st``/``_why``/``_tag``/``_rs`` (restarts) to the newest allocation with that name.

    A RUNNING job wins over a queued one (a persistent allocation's successor pends while its
    predecessor still runs); among equals, the highest job id is the newest. Looked up every time:
    a resubmission changes the id behind the name.
    """
    return (
        f'_q=$(squeue -h -u "$(id -un)" -n {name_arg} -t {_ALIVE} '
        "-O 'JobID:|,State:|,Reason:|,Comment:|,RestartCnt:|') "
        "|| { echo 'squeue failed' >&2; exit 1; }\n"
        "_row=$(printf '%s\\n' \"$_q\" | awk -F'|' 'NF >= 4 { r = ($2 == \"RUNNING\") ? 1 : 0; "
        "if (r > br || (r == br && $1 + 0 > bi)) { br = r; bi = $1 + 0; best = $0 } } END { print best }')\n"
        "_j=$(printf '%s' \"$_row\" | cut -d'|' -f1 | tr -d ' ')\n"
        "_st=$(printf '%s' \"$_row\" | cut -d'|' -f2 | tr -d ' ')\n"
        "_why=$(printf '%s' \"$_row\" | cut -d'|' -f3 | tr -d ' ')\n"
        "_tag=$(printf '%s' \"$_row\" | cut -d'|' -f4 | tr -d ' ')\n"
        "_rs=$(printf '%s' \"$_row\" | cut -d'|' -f5 | tr -d ' ')\n"
    )


def book_script(spec: AllocationSpec, *, log_dir: str) -> str:
    """One round trip: adopt the live allocation with this name, or save the script and submit it."""
    directory = allocation_dir(log_dir, spec.reservation)
    saved = remote_shell.home_relative(directory + "/allocation.sbatch")
    return (
        f"mkdir -p -- {remote_shell.home_relative(directory)} || exit 1\n"
        # Two bookings of one name at once must not both submit.
        f"exec 9>>{remote_shell.home_relative(directory + '.lock')}\n"
        "flock -w 120 9 || { echo 'could not take the booking lock' >&2; exit 1; }\n"
        + allocation_lookup(quote(spec.reservation))
        + 'if [ -n "$_j" ]; then printf \'ADOPTED %s %s %s\\n\' "$_j" "$_st" "$_tag"; exit 0; fi\n'
        + remote_shell.heredoc(render_allocation_script(spec, log_dir=log_dir), feed=f"cat > {saved}.tmp")
        + f"mv -f -- {saved}.tmp {saved} || exit 1\n"
        + f"_id=$({sbatch_words(spec.reservation, log_dir)}) || exit $?\n"
        "_id=${_id%%;*}\n"
        "printf 'SUBMITTED %s %s\\n' \"$_id\" \"$(squeue -h -j \"$_id\" -O 'State:|' 2>/dev/null | tr -d '|')\"\n"
    )


@dataclass(frozen=True)
class AllocationFound:
    """What the name points at now. ``job_id`` None: no live job has that name."""

    job_id: str | None
    state: str | None = None
    reason: str | None = None
    ours: bool = False  # booked by this provider (comment), so a tmux server should run in it
    submitted: bool = False

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"


def parse_book_output(stdout: str) -> AllocationFound:
    for line in stdout.splitlines():
        words = line.split()
        if words and words[0] in ("ADOPTED", "SUBMITTED") and len(words) >= 2 and words[1].isdigit():
            state = words[2] if len(words) > 2 else None
            ours = words[0] == "SUBMITTED" or (len(words) > 3 and words[3] == ALLOCATION_TAG)
            return AllocationFound(job_id=words[1], state=state, ours=ours, submitted=words[0] == "SUBMITTED")
    raise ValueError(f"no allocation id in the booking's output: {stdout!r}")


def find_script(reservation: str) -> str:
    return allocation_lookup(quote(reservation)) + 'printf \'FOUND %s|%s|%s|%s\\n\' "$_j" "$_st" "$_why" "$_tag"\n'


def parse_find_output(stdout: str) -> AllocationFound:
    for line in stdout.splitlines():
        if line.startswith("FOUND "):
            job_id, state, reason, tag = [*line[len("FOUND ") :].split("|"), "", "", ""][:4]
            if not job_id:
                return AllocationFound(job_id=None)
            return AllocationFound(
                job_id=job_id, state=state or None, reason=reason or None, ours=tag == ALLOCATION_TAG
            )
    raise ValueError(f"no answer in the allocation lookup's output: {stdout!r}")


def release_script(reservation: str) -> str:
    """Cancel every live job of ours with this name: a persistent allocation's successor too.

    Only jobs that carry our allocation tag are cancelled: a job someone else named alike is
    left alone (and listed, so the user can see it).
    """
    return (
        f"_q=$(squeue -h -u \"$(id -un)\" -n {quote(reservation)} -t {_ALIVE} -O 'JobID:|,Comment:|') || exit 1\n"
        f"_ids=$(printf '%s\\n' \"$_q\" | awk -F'|' -v t={quote(ALLOCATION_TAG)} '$2 == t {{ print $1 }}' "
        "| tr -d ' ')\n"
        f"_other=$(printf '%s\\n' \"$_q\" | awk -F'|' -v t={quote(ALLOCATION_TAG)} 'NF >= 2 && $2 != t {{ print $1 }}' "
        "| tr -d ' ')\n"
        "for _id in $_ids; do printf 'RELEASED %s\\n' \"$_id\"; done\n"
        "for _id in $_other; do printf 'FOREIGN %s\\n' \"$_id\"; done\n"
        'if [ -n "$_ids" ]; then scancel -- $_ids || exit $?; fi\n'
    )


@dataclass(frozen=True)
class Released:
    job_ids: tuple[str, ...]
    foreign: tuple[str, ...]


def parse_release_output(stdout: str) -> Released:
    released = tuple(line.split()[1] for line in stdout.splitlines() if line.startswith("RELEASED "))
    foreign = tuple(line.split()[1] for line in stdout.splitlines() if line.startswith("FOREIGN "))
    return Released(released, foreign)
