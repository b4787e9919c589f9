"""The engine's absence rules, once, for every source: a job never succeeds by absence.

Each source of the engine (the SSH cluster poller with each scheduler's dialect, the EC2 runner,
AWS Batch) hands its observations to the same rules with its own settings. The observations here
come from a fake source (a script of what each poll saw) and the clock is a number, so every rule
is checked for every source without a cluster, an AWS API or a real wait.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from airflow_hpc_provider.dialects import batch as batch_dialect
from airflow_hpc_provider.dialects.base import Observation
from airflow_hpc_provider.dialects.ec2 import Ec2RunnerDialect
from airflow_hpc_provider.dialects.pbs import PbsDialect
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.dialects.sge import SgeDialect
from airflow_hpc_provider.dialects.slurm import SlurmDialect
from airflow_hpc_provider.dialects.slurm_tenant_poll import SlurmTenantDialect
from airflow_hpc_provider.jobs import JobState, JobStatus
from airflow_hpc_provider.watching import batch, cluster
from airflow_hpc_provider.watching.events import Notice, StatusChanged, WatchEvent
from airflow_hpc_provider.watching.rules import AbsenceRules, Standing, settle

CLUSTER = cluster.PollerSettings(interval_s=5, gap_grace_s=120, missing_grace_s=600)
SOURCES = {
    "slurm": cluster.absence_rules(SlurmDialect(), CLUSTER),
    "pbs-pro": cluster.absence_rules(PbsDialect(PbsFlavour.PBS_PRO, "/logs"), CLUSTER),
    "torque": cluster.absence_rules(PbsDialect(PbsFlavour.TORQUE, "/logs"), CLUSTER),
    "grid-engine": cluster.absence_rules(SgeDialect("/logs"), CLUSTER),
    "slurm-tenant": cluster.absence_rules(SlurmTenantDialect("/logs"), CLUSTER),
    "ec2-runner": cluster.absence_rules(Ec2RunnerDialect("/run"), CLUSTER),
    "aws-batch": batch.absence_rules(batch.BatchPollerSettings(missing_grace_s=300)),
}
every_source = pytest.mark.parametrize("rules", SOURCES.values(), ids=SOURCES.keys())

GONE = Observation(None, final=False)


def status(state: JobState, native: str | None = None, **kw: object) -> JobStatus:
    return JobStatus(job_id="7", state=state, native_state=native or state.value, **kw)  # type: ignore[arg-type]


def seen(state: JobState, *, final: bool, native: str | None = None, **kw: object) -> Observation:
    return Observation(status(state, native, **kw), final=final)


class FakeSource:
    """Feeds one job's observations to the rules at the times given, as a source's polls would."""

    def __init__(self, rules: AbsenceRules) -> None:
        self.rules = rules
        self.standing = Standing("7")
        self.events: list[WatchEvent] = []

    def poll(self, observation: Observation, at: float) -> JobStatus | None:
        verdict = settle(self.standing, observation, at, self.rules)
        self.events += verdict.events
        return verdict.final

    def polls(self, script: Sequence[tuple[float, Observation]]) -> list[JobStatus | None]:
        return [self.poll(observation, at) for at, observation in script]

    def notices(self) -> list[str]:
        return [event.message for event in self.events if isinstance(event, Notice)]


@every_source
def test_a_job_the_source_does_not_know_is_lost_only_after_the_grace_period_and_never_a_success(rules) -> None:
    source = FakeSource(rules)
    grace = rules.missing_grace_s
    assert source.polls([(1000.0, GONE), (1000.0 + grace - 1, GONE)]) == [None, None]
    lost = source.poll(GONE, at=1000.0 + grace)
    assert lost is not None and lost.state is JobState.LOST and not lost.state.is_success
    assert lost.exit_code is None and rules.source in (lost.reason or "")


@every_source
def test_seeing_the_job_again_starts_the_missing_clock_over(rules) -> None:
    source = FakeSource(rules)
    grace = rules.missing_grace_s
    source.poll(GONE, at=0.0)
    source.poll(seen(JobState.PENDING, final=False), at=grace - 10)
    assert source.poll(GONE, at=grace + 10) is None
    assert source.poll(GONE, at=2 * grace + 9) is None  # missing since grace + 10 only
    assert source.poll(GONE, at=2 * grace + 10) is not None


@every_source
def test_an_end_the_accounting_has_not_confirmed_waits_then_is_taken_with_a_notice(rules) -> None:
    source = FakeSource(rules)
    ended_in_queue = seen(JobState.COMPLETED, final=False, exit_code=0)
    assert source.poll(ended_in_queue, at=0.0) is None
    assert source.poll(ended_in_queue, at=rules.gap_grace_s - 1) is None
    taken = source.poll(ended_in_queue, at=rules.gap_grace_s)
    assert taken is not None and taken.state is JobState.COMPLETED
    assert any("never confirmed" in notice for notice in source.notices())


@every_source
def test_a_job_that_runs_again_after_an_unconfirmed_end_starts_the_gap_clock_over(rules) -> None:
    source = FakeSource(rules)
    source.poll(seen(JobState.FAILED, final=False), at=0.0)
    source.poll(seen(JobState.RUNNING, final=False), at=rules.gap_grace_s - 1)
    assert source.poll(seen(JobState.FAILED, final=False), at=rules.gap_grace_s + 1) is None


@every_source
def test_a_final_observation_ends_the_watch_at_once_with_its_exit_code(rules) -> None:
    final = FakeSource(rules).poll(seen(JobState.FAILED, final=True, exit_code=3), at=0.0)
    assert final is not None and final.state is JobState.FAILED and final.exit_code == 3


@every_source
def test_preempted_must_be_seen_in_two_polls_in_a_row_because_a_requeued_job_passes_through_it(rules) -> None:
    source = FakeSource(rules)
    preempted = seen(JobState.PREEMPTED, final=True)
    assert source.polls([(0.0, preempted), (5.0, seen(JobState.PENDING, final=False)), (10.0, preempted)]) == [
        None,
        None,
        None,
    ]
    assert source.poll(preempted, at=15.0) is not None


@every_source
def test_running_and_pending_never_end_a_watch_however_long_they_last(rules) -> None:
    source = FakeSource(rules)
    script = [
        (t * 1000.0, seen(state, final=False)) for t, state in enumerate([JobState.PENDING, JobState.RUNNING] * 5)
    ]
    assert source.polls(script) == [None] * 10


@every_source
def test_a_native_state_the_provider_does_not_know_is_said_once_and_the_job_is_still_watched(rules) -> None:
    source = FakeSource(rules)
    odd = seen(JobState.UNKNOWN, final=False, native="SOMETHING_NEW")
    assert source.polls([(0.0, odd), (5.0, odd), (10.0, odd)]) == [None, None, None]
    notices = source.notices()
    assert len(notices) == 1 and "SOMETHING_NEW" in notices[0] and rules.source in notices[0]


@every_source
def test_each_change_of_state_reason_or_node_is_announced_once(rules) -> None:
    source = FakeSource(rules)
    source.polls(
        [
            (0.0, seen(JobState.PENDING, final=False, reason="Priority")),
            (5.0, seen(JobState.PENDING, final=False, reason="Priority")),
            (10.0, seen(JobState.PENDING, final=False, reason="Resources")),
            (15.0, seen(JobState.RUNNING, final=False, nodes="n1")),
            (20.0, seen(JobState.RUNNING, final=False, nodes="n1")),
        ]
    )
    changes = [event.status.describe() for event in source.events if isinstance(event, StatusChanged)]
    assert len(changes) == 3 and changes[:2] == ["PENDING (Priority)", "PENDING (Resources)"]


def test_batch_answers_become_observations_final_only_when_the_job_succeeded_or_failed() -> None:
    def described(status_word: str) -> dict[str, object]:
        return {"jobId": "7", "status": status_word, "attempts": [], "container": {}}

    assert batch_dialect.observe(None) == Observation(None, final=False)
    words = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
    finals = {word: batch_dialect.observe(described(word)).final for word in words}
    assert {word for word, final in finals.items() if final} == {"SUCCEEDED", "FAILED"}
