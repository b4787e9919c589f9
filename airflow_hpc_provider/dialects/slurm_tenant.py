"""Tenants: many tasks started inside one long Slurm allocation, as pure functions: their names,
ids and files, launching one, and stopping it.

An allocation (:mod:`airflow_hpc_provider.dialects.slurm_allocation`) is a batch job whose main
process is a tmux server. A *tenant* is one task's command, started as a tmux session in that
server with ``srun --jobid=<J> --overlap``: the session is created by the server, so its processes
live in the allocation's batch cgroup and survive the short ``srun`` step that asked for them (with
cgroup process tracking, anything the step itself started dies with it). How tenants are polled is
in :mod:`airflow_hpc_provider.dialects.slurm_tenant_poll`.

Facts this relies on (Slurm 22.05, tmux 3.3a, checked on the test cluster):

* A session created through an ``srun --overlap`` step lands in ``step_batch``'s cgroup.
* ``srun`` dies on SIGHUP without cancelling its step (which then holds its CPUs): tenants are
  stopped with SIGTERM to the pane's process group, on which ``srun`` cancels its step.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from airflow_hpc_provider.dialects import remote_shell
from airflow_hpc_provider.dialects.remote_shell import quote
from airflow_hpc_provider.dialects.slurm_allocation import ALLOCATION_TAG, allocation_lookup, socket_name
from airflow_hpc_provider.jobs import JobKey

_TENANT_ID = re.compile(r"^(\d+):([0-9a-f]{1,64}):(\d+)$")


def session_name(task_digest: str, try_number: int) -> str:
    """The tmux session of one try of a task instance. A retry finds the session an earlier try
    started through ``<digest>.current``, the try that last started one (see :func:`launch_script`)."""
    return f"airflow-{task_digest}-try{int(try_number)}"


# --- files on the cluster -------------------------------------------------------------------------


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
        allocation_lookup(quote(reservation))
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


class LaunchWord(enum.StrEnum):
    """What the launch script answered (its first word); the value is the word on the wire."""

    STARTED = "STARTED"
    """A new tmux session runs the tenant in the allocation."""
    ADOPTED = "ADOPTED"
    """An earlier try's tenant of this task still runs: it is watched, not started again."""
    DONE = "DONE"
    """An earlier try's tenant of this task ended and nobody consumed its outcome: it is taken."""
    NOALLOC = "NOALLOC"
    """No allocation of the reservation is queued or running."""
    NOTRUNNING = "NOTRUNNING"
    """The reservation's allocation exists but is not running yet."""
    NOTOURS = "NOTOURS"
    """The allocation of that name was not booked by this provider: left alone."""
    NOSERVER = "NOSERVER"
    """The allocation runs but its tmux server does not answer."""


_REFUSALS = frozenset({LaunchWord.NOTRUNNING, LaunchWord.NOTOURS, LaunchWord.NOSERVER})


@dataclass(frozen=True)
class LaunchOutcome:
    word: LaunchWord
    allocation_id: str | None = None
    try_number: int | None = None
    detail: str = ""


def parse_launch_output(stdout: str) -> LaunchOutcome:
    for line in stdout.splitlines():
        text, _, rest = line.partition(" ")
        if text not in LaunchWord.__members__:
            continue
        word = LaunchWord(text)
        if word is LaunchWord.NOALLOC:
            return LaunchOutcome(word)
        if word in _REFUSALS:
            job_id, _, detail = rest.partition(" ")
            return LaunchOutcome(word, allocation_id=job_id, detail=detail.strip())
        job_id, _, try_text = rest.partition(" ")
        if not job_id.isdigit() or not try_text.strip().isdigit():
            raise ValueError(f"unreadable tenant launch answer: {line!r}")
        return LaunchOutcome(word, allocation_id=job_id, try_number=int(try_text))
    raise ValueError(f"no answer in the tenant launch's output: {stdout!r}")


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
