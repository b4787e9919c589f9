"""The rules that keep a job from succeeding by absence, written once for every source.

A source (an SSH cluster's scheduler, an EC2 instance's runner, AWS Batch) turns each poll's answer
about a job into an :class:`~airflow_hpc_provider.dialects.base.Observation`; :func:`settle` decides
what that observation means, given what was seen before (a :class:`Standing`) and the time now:

* only a *final* observation ends a watch (the dialect says which are final);
* a terminal state that is not final yet (Slurm's queue says the job ended, accounting has not
  recorded it) waits up to ``gap_grace_s``, then is taken as it stands, with a notice;
* a job the source does not know at all is ``LOST`` after ``missing_grace_s``: never a success;
* a state in ``confirm_twice`` (PREEMPTED: a requeued job passes through it on its way back to the
  queue) must be seen in two polls in a row before it ends the watch;
* a native state the provider does not know becomes UNKNOWN, said once per state, and is watched on;
* a status change is announced once (state, reason or node changed).

The rule that a failed poll concludes nothing is the callers': a poll that fails never reaches
:func:`settle`. The clock is a parameter, so the rules are tested with a fake one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from airflow_hpc_provider.dialects.base import Observation
from airflow_hpc_provider.jobs import JobState, JobStatus
from airflow_hpc_provider.watching.events import Notice, StatusChanged, WatchEvent


@dataclass(frozen=True)
class AbsenceRules:
    """One source's settings for the rules: its name (for messages) and its grace periods."""

    source: str
    missing_grace_s: float
    gap_grace_s: float = 120.0
    confirm_twice: frozenset[JobState] = frozenset({JobState.PREEMPTED})


@dataclass
class Standing:
    """What the rules remember about one job between polls."""

    job_id: str
    last: JobStatus | None = None
    missing_since: float | None = None
    unsettled_since: float | None = None
    pending_final: JobStatus | None = None
    warned_states: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Verdict:
    """What one observation means: events for the job's watchers, and the final status once there is one."""

    events: tuple[WatchEvent, ...] = ()
    final: JobStatus | None = None


def settle(standing: Standing, seen: Observation, now: float, rules: AbsenceRules) -> Verdict:
    """Apply the module's rules to one observation of one job at time ``now``."""
    status = seen.status
    if status is None:
        if standing.missing_since is None:
            standing.missing_since = now
        missing_for = now - standing.missing_since
        if missing_for < rules.missing_grace_s:
            return Verdict()
        lost = JobStatus(
            job_id=standing.job_id,
            state=JobState.LOST,
            native_state="LOST",
            reason=f"unknown to {rules.source} for {missing_for:.0f}s",
        )
        return Verdict(final=lost)
    standing.missing_since = None
    events: list[WatchEvent] = []
    if status.state is JobState.UNKNOWN and status.native_state not in standing.warned_states:
        standing.warned_states.add(status.native_state)
        events.append(
            Notice(
                f"{rules.source} reports state {status.native_state!r}, which this provider does not know; "
                "still watching"
            )
        )
    if standing.last is None or _shown(standing.last) != _shown(status):
        events.append(StatusChanged(status))
    standing.last = status
    if seen.final:
        standing.unsettled_since = None
        if status.state in rules.confirm_twice and standing.pending_final != status:
            standing.pending_final = status
            return Verdict(tuple(events))
        return Verdict(tuple(events), final=status)
    standing.pending_final = None
    if not status.state.is_terminal:
        standing.unsettled_since = None
        return Verdict(tuple(events))
    # The queue says it ended but accounting has not caught up: wait, within reason.
    if standing.unsettled_since is None:
        standing.unsettled_since = now
    if now - standing.unsettled_since < rules.gap_grace_s:
        return Verdict(tuple(events))
    events.append(
        Notice(
            f"accounting never confirmed how job {status.job_id} ended; taking the queue's word: {status.native_state}"
        )
    )
    return Verdict(tuple(events), final=status)


def _shown(status: JobStatus) -> tuple[str, str | None, str | None]:
    """What a watcher is told about: a change in any of these is announced."""
    return (status.native_state, status.reason, status.nodes)
