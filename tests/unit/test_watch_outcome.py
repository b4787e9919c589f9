"""A watch's outcome crosses the trigger event as JSON and comes back as the same closed kind."""

from __future__ import annotations

import json

import pytest

from airflow_hpc_provider.jobs import JobState, JobStatus
from airflow_hpc_provider.watching.events import Outcome, WatchOutcome


@pytest.mark.parametrize("kind", list(Outcome), ids=lambda kind: kind.name)
def test_an_outcome_survives_the_trigger_event_with_its_kind_as_a_plain_word(kind: Outcome) -> None:
    outcome = WatchOutcome(kind, "4242", status=JobStatus("4242", JobState.FAILED, "F", exit_code=3), message="why")
    event = json.loads(json.dumps(outcome.to_dict()))
    assert event["kind"] == kind.value and type(event["kind"]) is str
    assert WatchOutcome.from_dict(event) == outcome and WatchOutcome.from_dict(event).kind is kind


def test_an_event_of_an_unknown_kind_is_refused_not_read_as_some_outcome() -> None:
    with pytest.raises(ValueError, match="'finished'"):
        WatchOutcome.from_dict({"kind": "finished", "job_id": "1", "status": None, "message": None})
