"""Slurm jobs that outlive their time limit: a signal before it, a user's checkpoint, then a requeue.

``signal_before_timeout="USR1@300"`` asks Slurm to signal the batch shell that long before the limit
(``--signal=B:USR1@300``). The shell runs the command in the background so that its trap runs at
once (bash runs a trap only between commands, and ``wait`` is one it interrupts): the ``on_signal``
lines run, the command itself gets the signal (its own handler may checkpoint; without one it
ends), and once it has ended, while ``resubmit_on_timeout`` runs are left, the job requeues itself
(``scontrol requeue``: same job id, ``--requeue``).

A requeued job is what every Slurm job of the provider already handles: the same output file opened
with ``--open-mode=append``, and a ``--- run N of job ID (requeued) ---`` line the batch script
prints first in each new run (``slurm.RUN_MARKER_LINES``, from Slurm's restart count). The lines
this script prints say why a run ended early, so a requeue for the time limit is told apart from
a preemption (no such line) and from a user's ``scancel`` (the job ends CANCELLED). The last run
gets the signal too and is not requeued: once its command has ended, the job exits 124, never 0
(a run cut short is no success), or it ends TIMEOUT.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from airflow_hpc_provider.errors import JobSpecError

# Signals a job may ask for before its limit: the ones a program can catch and that mean nothing
# else to Slurm or bash here (KILL and STOP cannot be caught; CHLD/PIPE would confuse the shell).
SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP", "URG")
# The exit status of a run the signal ended without a requeue (the convention of timeout(1)).
CUT_SHORT_EXIT_CODE = 124
MAX_SIGNAL_LEAD_S = 65535  # Slurm keeps --signal's time in 16 bits
_SIGNAL_SPEC = re.compile(r"(?:SIG)?([A-Z0-9]+)@(\d+)")


@dataclass(frozen=True)
class SignalBeforeTimeout:
    """What the job does near its limit: ``signal`` ``lead_s`` seconds before it, then up to
    ``resubmits`` requeues, with ``on_signal`` lines run in the batch shell first."""

    signal: str
    lead_s: int
    resubmits: int = 0
    on_signal: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, *, resubmits: int, on_signal: Sequence[str]) -> SignalBeforeTimeout:
        match = _SIGNAL_SPEC.fullmatch(text.strip().upper())
        if match is None or match.group(1) not in SIGNALS:
            raise JobSpecError(
                f"signal_before_timeout={text!r}: give '<signal>@<seconds>' with one of "
                f"{', '.join(SIGNALS)}, e.g. 'USR1@300'"
            )
        lead_s = int(match.group(2))
        if not 1 <= lead_s <= MAX_SIGNAL_LEAD_S:
            raise JobSpecError(f"signal_before_timeout={text!r}: seconds from 1 to {MAX_SIGNAL_LEAD_S}")
        if isinstance(resubmits, bool) or not isinstance(resubmits, int) or resubmits < 0:
            raise JobSpecError(f"resubmit_on_timeout={resubmits!r}: a whole number of resubmissions, 0 or more")
        for line in on_signal:
            if not isinstance(line, str) or "\n" in line or "\r" in line:
                raise JobSpecError(f"on_signal: {line!r} must be one line of shell")
        return cls(signal=match.group(1), lead_s=lead_s, resubmits=resubmits, on_signal=tuple(on_signal))

    def directives(self) -> list[str]:
        options = [f"--signal=B:{self.signal}@{self.lead_s}"]
        if self.resubmits:
            options.append("--requeue")
        return options

    def wrap(self, body: str) -> str:
        """``body`` (the command, or the rest of the user's script) run so that the trap can act."""
        hook = "".join(f"  {line}\n" for line in self.on_signal)
        body = body if body.endswith("\n") else body + "\n"
        return (
            f"# airflow-hpc: {self.signal} {self.lead_s}s before the time limit"
            f"{f', then requeued up to {self.resubmits} times' if self.resubmits else ''}\n"
            "_airflow_hpc_run=$(( ${SLURM_RESTART_COUNT:-0} + 1 ))\n"
            "_airflow_hpc_near_limit() {\n"
            f"  trap '' {self.signal}\n"
            f'  echo "--- time limit near: {self.signal} in run $_airflow_hpc_run of job $SLURM_JOB_ID ---"\n'
            f"{hook}"
            f'  kill -{self.signal} "$_airflow_hpc_child" 2>/dev/null\n'
            '  wait "$_airflow_hpc_child"\n'
            f'  if [ "$_airflow_hpc_run" -le {self.resubmits} ]; then\n'
            f'    echo "--- requeued before its time limit: run $(( _airflow_hpc_run + 1 )) of at most '
            f'{self.resubmits + 1} follows ---"\n'
            '    scontrol requeue "$SLURM_JOB_ID" && exit 0\n'
            '    echo "--- could not requeue job $SLURM_JOB_ID ---" >&2\n'
            "  fi\n"
            # Cut short by the limit with no run to follow: never a success, whatever the command said.
            f'  echo "--- stopped by the time limit signal, no run follows: exit {CUT_SHORT_EXIT_CODE} ---"\n'
            f"  exit {CUT_SHORT_EXIT_CODE}\n"
            "}\n"
            f"trap _airflow_hpc_near_limit {self.signal}\n"
            "(\n"
            f"{body}"
            ") &\n"
            "_airflow_hpc_child=$!\n"
            'wait "$_airflow_hpc_child"\n'
        )
