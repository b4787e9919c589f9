"""Tenants: many tasks started inside one long Slurm allocation, as pure functions.

An *allocation* is an ordinary batch job whose main process is a tmux server on a private socket
(``tmux -L airflow-hpc-<job id> -D``). It is found by its *reservation*, a friendly name stored as
the Slurm job name, and recognised as ours by its comment. A *tenant* is one task's command, started
as a tmux session in that server with ``srun --jobid=<J> --overlap``: the session is created by the
server, so its processes live in the allocation's batch cgroup and survive the short ``srun`` step
that asked for them (with cgroup process tracking, anything the step itself started dies with it).

Every tenant writes its output to its own log file (the pane's scrollback is lossy) and, when its
command ends, its exit status to a sentinel file, written to a temporary name and renamed so a
reader never sees half of it. One poll reads ``squeue`` for every allocation and the sentinel of
every tenant; nothing is run on the compute node to poll.

Facts this relies on (Slurm 22.05, tmux 3.3a, checked on the test cluster):

* ``tmux -D`` runs the server in the foreground with ``exit-empty`` off: it outlives its sessions,
  and ``list-sessions`` on it exits 0 with no session at all; without a server it exits 1.
* A session created through an ``srun --overlap`` step lands in ``step_batch``'s cgroup.
* ``srun`` dies on SIGHUP without cancelling its step (which then holds its CPUs): tenants are
  stopped with SIGTERM to the pane's process group, on which ``srun`` cancels its step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from airflow_hpc_provider.dialects import remote_shell, slurm, slurm_status
from airflow_hpc_provider.dialects.base import Observation, PollReport
from airflow_hpc_provider.dialects.remote_shell import LogRead, quote
from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import JobKey, JobSpec, JobState, JobStatus, signal_of_shell_status

# The comment of an allocation booked by this provider: the promise that a tmux server runs in it.
ALLOCATION_TAG = "airflow-hpc-allocation:v1"
SOCKET_PREFIX = "airflow-hpc-"

# Reservation names become the Slurm job name and part of file names: keep them tame.
_RESERVATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_TENANT_ID = re.compile(r"^(\d+):([0-9a-f]{1,64}):(\d+)$")

# States in which an allocation can still host its tenants (or will again, once it runs).
_ALIVE = "PENDING,CONFIGURING,RUNNING,SUSPENDED,REQUEUED,REQUEUE_HOLD,REQUEUE_FED,RESIZING,STOPPED"
_HOSTING = frozenset({JobState.RUNNING, JobState.SUSPENDED})


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


def session_name(task_digest: str, try_number: int) -> str:
    """The tmux session of one try of a task instance. A retry finds the session an earlier try
    started through ``<digest>.current``, the try that last started one (see :func:`launch_script`)."""
    return f"airflow-{task_digest}-try{int(try_number)}"


# --- files on the cluster -------------------------------------------------------------------------


def allocation_dir(log_dir: str, reservation: str) -> str:
    return f"{log_dir.rstrip('/')}/allocations/{reservation}"


def tenant_dir(log_dir: str, allocation_id: str, key: JobKey, try_number: int) -> str:
    return f"{log_dir.rstrip('/')}/tenants/{allocation_id}/{key.task_digest}-try{int(try_number)}"


def tenant_id(allocation_id: str, key: JobKey, try_number: int) -> str:
    """What the poller calls a tenant: ``<allocation job id>:<task digest>:<try>``, no spaces."""
    return f"{allocation_id}:{key.task_digest}:{int(try_number)}"


@dataclass(frozen=True)
class TenantRef:
    allocation_id: str
    task_digest: str
    try_number: int

    @classmethod
    def parse(cls, value: str) -> TenantRef:
        match = _TENANT_ID.fullmatch(value)
        if not match:
            raise ValueError(f"{value!r} is not a tenant id (<job id>:<digest>:<try>)")
        return cls(match.group(1), match.group(2), int(match.group(3)))

    @property
    def session(self) -> str:
        return session_name(self.task_digest, self.try_number)

    def directory(self, log_dir: str) -> str:
        return f"{log_dir.rstrip('/')}/tenants/{self.allocation_id}/{self.task_digest}-try{self.try_number}"


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


def _lookup(name_arg: str) -> str:
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
        + _lookup(quote(spec.reservation))
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
    return _lookup(quote(reservation)) + 'printf \'FOUND %s|%s|%s|%s\\n\' "$_j" "$_st" "$_why" "$_tag"\n'


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


# --- launching a tenant ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TenantSpec:
    """One task's command, as it will run inside the allocation."""

    command: str
    setup: tuple[str, ...] = ()
    login_shell: bool = False
    working_dir: str | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)


def render_command(spec: TenantSpec) -> str:
    shebang = "#!/bin/bash -l\n" if spec.login_shell else "#!/bin/bash\n"
    setup = "".join(f"{line}\n" for line in spec.setup)
    cd = f"cd -- {quote(spec.working_dir)} || exit 1\n" if spec.working_dir else ""
    body = spec.command if spec.command.endswith("\n") else spec.command + "\n"
    return shebang + cd + setup + body


def render_wrapper(spec: TenantSpec) -> str:
    """The session's process: run the command into ``log``, then write ``exit`` atomically.

    It runs from its own directory (found from ``$0``), so nothing in it depends on the paths the
    login node chose. With ``cpus``, the command runs as its own job step (see :func:`step_lines`).
    """
    runner = 'bash "$_here/command.sh" >> "$_here/log" 2>&1 < /dev/null\n_rc=$?\n'
    if spec.cpus is not None:
        runner = step_lines(spec.cpus, spec.memory_mb)
    return (
        "#!/bin/bash\n"
        "# A tenant of an Airflow allocation; written by airflow-hpc-provider.\n"
        '_here=$(cd -- "$(dirname -- "$0")" && pwd) || exit 1\n'
        "_stopped=\n"
        # A stop is SIGTERM to this session's process group: note it, let the command end, record it.
        "trap '_stopped=1' HUP INT TERM\n"
        'if [ -f "$_here/env" ]; then . "$_here/env"; fi\n'
        + runner
        + 'if [ -n "$_stopped" ]; then _how=stopped; else _how=exited; fi\n'
        'printf \'%s %s\\n\' "$_rc" "$_how" > "$_here/exit.tmp" && mv -f -- "$_here/exit.tmp" "$_here/exit"\n'
    )


def step_lines(cpus: int, memory_mb: int | None) -> str:
    """Run the command as a job step of ``cpus`` CPUs and its memory share; set ``_rc``.

    Slurm makes the step wait while other tenants hold the allocation's CPUs or memory. Without
    ``--mem`` a step inside the allocation takes all its memory (srun reads the allocation's
    ``SLURM_MEM_PER_NODE``), and tenants would run one at a time; so every step gets a share:
    ``memory_mb`` when the task gave one, else the allocation's memory per CPU times ``cpus``.
    Tenants whose CPUs fit then run side by side, and the memory never adds up to more than the
    allocation's.

    The command's output goes to the log through ``srun --output`` (appending, byte for byte);
    srun's own words come through a filter that says in plain terms when the tenant waits for
    room (srun: ``step creation temporarily disabled``) and when it starts.
    """
    share = (
        f"_mem={int(memory_mb)}\n"
        if memory_mb is not None
        else (
            "_mem=\n"
            "_node_mem=${SLURM_MEM_PER_NODE:-}\n"
            'if [ -z "$_node_mem" ] && [ -n "${SLURM_MEM_PER_CPU:-}" ]; then\n'
            "  _node_mem=$((SLURM_MEM_PER_CPU * ${SLURM_CPUS_ON_NODE:-1}))\n"
            "fi\n"
            'if [ -n "$_node_mem" ] && [ "${SLURM_CPUS_ON_NODE:-0}" -gt 0 ]; then\n'
            f"  _mem=$((_node_mem * {int(cpus)} / SLURM_CPUS_ON_NODE))\n"
            '  [ "$_mem" -ge 1 ] || _mem=1\n'
            "fi\n"
        )
    )
    notes = (
        "_notes() {\n"
        # srun must never die of a broken pipe while it cancels its step on a stop.
        "  trap '' HUP INT TERM\n"
        '  while IFS= read -r _l || [ -n "$_l" ]; do\n'
        "    case $_l in\n"
        '      *"step creation temporarily disabled"*)\n'
        "        printf 'airflow-hpc: waiting for room in allocation %s: this tenant asks for %s CPU(s)%s, "
        "which other tenants hold now\\n' \\\n"
        f'          "$SLURM_JOB_ID" {int(cpus)} "${{_mem:+ and $_mem MiB}}";;\n'
        "      *\"Step created for job\"*) printf 'airflow-hpc: room found; the tenant starts\\n';;\n"
        "    esac\n"
        "    printf '%s\\n' \"$_l\"\n"
        "  done\n"
        "}\n"
    )
    step = " ".join(
        [
            "srun",
            '--jobid="$SLURM_JOB_ID"',
            "--exact",
            "--ntasks=1",
            "--nodes=1",
            f"--cpus-per-task={int(cpus)}",
            '${_mem:+--mem="$_mem"M}',
            '--job-name="tenant-$(basename -- "$_here")"',
            # srun expands %-patterns in file names: a literal % is written %%.
            '--output="${_here//%/%%}/log"',
            "--open-mode=append",
            'bash "$_here/command.sh" < /dev/null 2>&1 | _notes >> "$_here/log"',
        ]
    )
    return share + notes + step + "\n_rc=${PIPESTATUS[0]}\n"


def launch_script(reservation: str, spec: TenantSpec, *, key: JobKey, log_dir: str) -> str:
    """One round trip: find the allocation, adopt an earlier try's tenant or start a new one.

    The try that last started a tenant of this task instance in the allocation is kept in
    ``<digest>.current``. Unless a trigger watched it (its ``cursor.watched`` marker: the task was
    cleared or failed while deferred), it is adopted: ``ADOPTED`` while its session lives, ``DONE``
    when it already ended (its exit status decides the retry; nothing runs twice).

    Prints one of ``NOALLOC``, ``NOTRUNNING <id> <state> <reason>``, ``NOTOURS <id>``,
    ``NOSERVER <id> <tmux's words>``, ``ADOPTED <id> <try>``, ``DONE <id> <try>``,
    ``STARTED <id> <try>``.
    """
    base = remote_shell.home_relative(f"{log_dir.rstrip('/')}/tenants")
    session = session_name(key.task_digest, key.try_number)
    try_dir = f"{key.task_digest}-try{int(key.try_number)}"
    earlier = f"$2/{key.task_digest}-try$_t"
    env_lines = remote_shell.export_lines(spec.env)
    node = (
        # Runs on the allocation's node, inside a step of it: $1 job id, $2 tenant base dir.
        "_s=airflow-hpc-$1\n"
        f"_sess={quote(session)}\n"
        f'_d="$2/{try_dir}"\n'
        '_ls=$(tmux -L "$_s" list-sessions 2>&1) || { printf \'NOSERVER %s %s\\n\' "$1" "$_ls"; exit 0; }\n'
        f'_t=$(cat -- "$2/{key.task_digest}.current" 2>/dev/null)\n'
        "case $_t in ''|*[!0-9]*) _t=;; esac\n"
        f'if [ -n "$_t" ] && [ ! -e "{earlier}/cursor.watched" ]; then\n'
        f'  if tmux -L "$_s" has-session -t "=airflow-{key.task_digest}-try$_t" 2>/dev/null; then\n'
        '    printf \'ADOPTED %s %s\\n\' "$1" "$_t"; exit 0\n'
        "  fi\n"
        f'  if [ -f "{earlier}/exit" ]; then printf \'DONE %s %s\\n\' "$1" "$_t"; exit 0; fi\n'
        "fi\n"
        f'if [ -f "$_d/exit" ]; then printf \'DONE %s %s\\n\' "$1" {int(key.try_number)}; exit 0; fi\n'
        f"printf '%s\\n' {int(key.try_number)} > \"$2/{key.task_digest}.current\"\n"
        # Arguments after the session's name are exec'd directly by tmux, with no shell between.
        'tmux -L "$_s" new-session -d -s "$_sess" -x 200 -y 50 bash "$_d/run.sh" || exit $?\n'
        f"printf 'STARTED %s %s\\n' \"$1\" {int(key.try_number)}\n"
    )
    return (
        _lookup(quote(reservation))
        + 'if [ -z "$_j" ]; then echo NOALLOC; exit 0; fi\n'
        + 'if [ "$_st" != RUNNING ]; then printf \'NOTRUNNING %s %s %s\\n\' "$_j" "$_st" "$_why"; exit 0; fi\n'
        + f'if [ "$_tag" != {quote(ALLOCATION_TAG)} ]; then printf \'NOTOURS %s\\n\' "$_j"; exit 0; fi\n'
        + f'mkdir -p -- {base}/"$_j" || exit 1\n'
        + f'_b=$(cd -- {base}/"$_j" && pwd) || exit 1\n'
        + f'exec 9>>"$_b/{key.task_digest}.lock"\n'
        + "flock -w 120 9 || { echo 'could not take the launch lock' >&2; exit 1; }\n"
        + f'_d="$_b/{try_dir}"\n'
        # Files of a try that never started (no exit, no session) are rewritten; a finished try's are kept.
        + 'if [ ! -f "$_d/exit" ]; then\n'
        + '  mkdir -p -- "$_d" && chmod 700 "$_d" || exit 1\n'
        # Which run of the allocation hosts the tenant: a requeued allocation restarts without it.
        + '  printf \'run %s\\n\' "${_rs:-0}" > "$_d/allocation" || exit 1\n'
        + remote_shell.heredoc(render_command(spec), feed='  cat > "$_d/command.sh"')
        + remote_shell.heredoc(render_wrapper(spec), feed='  cat > "$_d/run.sh"')
        # umask: the env file may hold secrets; only the user reads it.
        + "  (umask 077; "
        + remote_shell.heredoc(env_lines, feed='cat > "$_d/env"').rstrip("\n")
        + "\n  ) || exit 1\n"
        + "fi\n"
        + remote_shell.heredoc(node, feed='srun --jobid="$_j" --overlap --ntasks=1 --nodes=1 sh -s -- "$_j" "$_b"')
    )


@dataclass(frozen=True)
class LaunchOutcome:
    word: str  # STARTED, ADOPTED, DONE, NOALLOC, NOTRUNNING, NOTOURS, NOSERVER
    allocation_id: str | None = None
    try_number: int | None = None
    detail: str = ""


def parse_launch_output(stdout: str) -> LaunchOutcome:
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "NOALLOC":
            return LaunchOutcome(word)
        if word in ("NOTRUNNING", "NOTOURS", "NOSERVER"):
            job_id, _, detail = rest.partition(" ")
            return LaunchOutcome(word, allocation_id=job_id, detail=detail.strip())
        if word in ("STARTED", "ADOPTED", "DONE"):
            job_id, _, try_text = rest.partition(" ")
            if not job_id.isdigit() or not try_text.strip().isdigit():
                raise ValueError(f"unreadable tenant launch answer: {line!r}")
            return LaunchOutcome(word, allocation_id=job_id, try_number=int(try_text))
    raise ValueError(f"no answer in the tenant launch's output: {stdout!r}")


# --- polling --------------------------------------------------------------------------------------


def poll_script(token: str, tenant_ids: Sequence[str], reads: Sequence[LogRead], *, log_dir: str) -> str:
    """squeue once for every allocation, then every tenant's sentinel: squeue first, so a tenant
    seen without a sentinel after its allocation ended really ended without one."""
    refs = [TenantRef.parse(value) for value in tenant_ids]
    allocations = sorted({ref.allocation_id for ref in refs})
    body = remote_shell.section(
        token,
        "squeue",
        f"squeue -h -t all -j {quote(','.join(allocations))} -O 'JobID:|,State:|,Reason:|,RestartCnt:|'",
    )
    # One cat per tenant: its exit status (once written) and the allocation run it started in.
    reads_lines = "".join(
        f"printf '%s|' {quote(value)}; cat -- {remote_shell.home_relative(ref.directory(log_dir) + '/exit')} "
        f"{remote_shell.home_relative(ref.directory(log_dir) + '/allocation')} 2>/dev/null; printf '\\n'; "
        for value, ref in zip(tenant_ids, refs, strict=True)
    )
    body += remote_shell.section(token, "sentinels", reads_lines + "true")
    return remote_shell.poll_script(token, body, reads)


def _allocation_states(text: str) -> dict[str, tuple[str, str]]:
    states: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        fields = [part.strip() for part in line.split("|")]
        if len(fields) >= 3 and fields[0]:
            states[fields[0]] = (fields[1], fields[2])
    return states


def _allocation_restarts(text: str) -> dict[str, int]:
    restarts: dict[str, int] = {}
    for line in text.splitlines():
        fields = [part.strip() for part in line.split("|")]
        if len(fields) >= 4 and fields[0] and fields[3].isdigit():
            restarts[fields[0]] = int(fields[3])
    return restarts


@dataclass(frozen=True)
class TenantFiles:
    """What one poll read in a tenant's directory: its exit status line, and the run of its
    allocation it started in (``None`` for tenants launched before this was recorded)."""

    exit: str | None
    started_run: int | None


def parse_sentinels(text: str, tenant_ids: Sequence[str]) -> dict[str, TenantFiles]:
    """``<tenant>|<exit file><allocation file>`` records, as the poll script prints them."""
    wanted = set(tenant_ids)
    found: dict[str, TenantFiles] = {}
    current: str | None = None
    for line in text.splitlines():
        tenant, sep, content = line.partition("|")
        if sep and tenant in wanted:
            current, found[tenant] = tenant, TenantFiles(None, None)
            line = content
        if current is None or not line.strip():
            continue
        part = line.strip()
        if part.startswith("run ") and part[4:].isdigit():
            found[current] = TenantFiles(found[current].exit, int(part[4:]))
        elif found[current].exit is None:
            found[current] = TenantFiles(part, found[current].started_run)
    return found


def observe_tenant(
    ref: TenantRef,
    tenant: str,
    sentinel: str | None,
    allocation: tuple[str, str] | None,
    *,
    started_run: int | None = None,
    restarts: int | None = None,
) -> Observation:
    """A sentinel is final; without one, the tenant runs as long as its allocation runs, in the
    run it started in (``started_run``): once the allocation was requeued (``restarts`` grew), its
    tmux server started again without the tenant's session."""
    if sentinel is not None:
        words = sentinel.split()
        code = int(words[0]) if words and words[0].isdigit() else None
        stopped = len(words) > 1 and words[1] == "stopped"
        if stopped:
            state, native = JobState.CANCELLED, "STOPPED"
        elif code == 0:
            state, native = JobState.COMPLETED, "COMPLETED"
        else:
            state, native = JobState.FAILED, "FAILED"
        # A shell (and srun) reports death by signal N as 128+N: say which signal, as sacct would.
        signal = signal_of_shell_status(code)
        return Observation(
            JobStatus(
                job_id=tenant,
                state=state,
                native_state=native,
                exit_code=0 if signal else code,
                signal=(signal or 0) if code is not None else None,
                reason="stopped" if stopped else None,
            ),
            final=True,
        )
    if allocation is None:
        return Observation(
            JobStatus(
                job_id=tenant,
                state=JobState.LOST,
                native_state="LOST",
                reason=f"allocation {ref.allocation_id} is unknown to Slurm and the tenant left no exit status",
            ),
            final=True,
        )
    native, reason = allocation
    state = slurm_status.map_state(native, reason)
    if not state.is_terminal and started_run is not None and restarts is not None and restarts > started_run:
        return Observation(
            JobStatus(
                job_id=tenant,
                state=JobState.FAILED,
                native_state=native,
                reason=f"allocation {ref.allocation_id} was requeued after the tenant started; "
                "the tenant's session ended with it",
            ),
            final=True,
        )
    if not state.is_terminal:
        shown = JobState.RUNNING if state in _HOSTING else state
        return Observation(
            JobStatus(job_id=tenant, state=shown, native_state=native, reason=None if shown is state else reason),
            final=False,
        )
    # The allocation ended and the tenant wrote no exit status: it went down with it.
    ended = JobState.FAILED if state is JobState.COMPLETED else state
    ending_reason = slurm_status.reason_for(state, reason)
    why = f"allocation {ref.allocation_id} ended {native}" + (f" ({ending_reason})" if ending_reason else "")
    return Observation(
        JobStatus(job_id=tenant, state=ended, native_state=native, reason=why + " while the tenant ran"),
        final=True,
    )


class SlurmTenantDialect:
    """Tenants as the poller sees them: ids are ``<allocation>:<digest>:<try>`` (see :func:`tenant_id`)."""

    name = "Slurm tenant"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def poll_script(self, token: str, job_ids: Sequence[str], reads: Sequence[LogRead]) -> str:
        if not job_ids:
            return remote_shell.poll_script(token, "", reads)
        return poll_script(token, job_ids, reads, log_dir=self.log_dir)

    def read_poll(self, sections: Mapping[str, tuple[int, str]], job_ids: Sequence[str]) -> PollReport:
        rc, text = sections.get("squeue", (1, "no squeue section in the poll's output"))
        if rc != 0 and "Invalid job id specified" not in text:
            return PollReport(observations={}, failure=f"squeue exited {rc}: {text.strip()!r}")
        allocations = _allocation_states(text) if rc == 0 else {}
        restarts = _allocation_restarts(text) if rc == 0 else {}
        if "sentinels" not in sections:
            return PollReport(observations={}, failure="no sentinel section in the poll's output")
        files = parse_sentinels(sections["sentinels"][1], job_ids)
        observations: dict[str, Observation] = {}
        for tenant in job_ids:
            ref = TenantRef.parse(tenant)
            if tenant not in files:
                continue  # not read this time: conclude nothing
            observations[tenant] = observe_tenant(
                ref,
                tenant,
                files[tenant].exit,
                allocations.get(ref.allocation_id),
                started_run=files[tenant].started_run,
                restarts=restarts.get(ref.allocation_id),
            )
        return PollReport(observations=observations)

    def cancel_script(self, job_ids: Sequence[str]) -> str:
        return stop_script(job_ids)


def stop_script(tenant_ids: Sequence[str]) -> str:
    """SIGTERM to each tenant's session (its process group), through a step of its allocation.

    Only the tenant's own processes get the signal; the tmux server and the allocation live on.
    A tenant whose allocation no longer runs has nothing left to stop.
    """
    lines = []
    for value in tenant_ids:
        ref = TenantRef.parse(value)
        node = (
            f"_p=$(tmux -L {quote(socket_name(ref.allocation_id))} list-panes -t {quote('=' + ref.session)} "
            "-F '#{pane_pid}' 2>/dev/null) || { echo 'no such session'; exit 0; }\n"
            # POSIX form (no '--'): dash's kill takes '--' for a pid and signals nothing.
            'for _x in $_p; do kill -TERM "-$_x" 2>/dev/null || kill -TERM "$_x"; done\n'
            'echo "stopped"\n'
        )
        lines.append(
            f'if [ "$(squeue -h -j {quote(ref.allocation_id)} -o %T 2>/dev/null)" = RUNNING ]; then\n'
            + remote_shell.heredoc(
                node, feed=f"srun --jobid={quote(ref.allocation_id)} --overlap --ntasks=1 --nodes=1 sh -s"
            )
            + "else echo 'allocation not running: nothing to stop'; fi\n"
        )
    return "".join(lines)
