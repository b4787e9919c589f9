"""Which failures fail a task at once (Airflow's AirflowFailException) and which leave its retries to work."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_hpc_provider.errors import (
    ClusterAuthError,
    ClusterUnreachableError,
    ConnectionConfigError,
    HostKeyMismatchError,
    JobFailedError,
    JobSpecError,
    SubmissionError,
    SubmissionRefusedError,
)
from airflow_hpc_provider.hooks.refusals import PBS_REFUSALS, SLURM_REFUSALS, submission_error

WHERE = "hpcuser@login1:22 (connection c)"


@pytest.mark.parametrize(
    "stderr",
    [
        "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
        "sbatch: error: invalid partition specified: nopart\nsbatch: error: Batch job submission failed: "
        "Invalid partition name specified",
        "sbatch: error: Batch job submission failed: Invalid qos specification",
        "sbatch: error: Invalid generic resource (gres) specification",
        "sbatch: unrecognized option '--foo'\nTry \"sbatch --help\" for more information",
        "sbatch: error: Batch job submission failed: Requested node configuration is not available",
    ],
)
def test_a_request_slurm_refuses_as_wrong_is_final(stderr: str) -> None:
    error = submission_error("sbatch", WHERE, 1, stderr, SLURM_REFUSALS)
    assert isinstance(error, SubmissionRefusedError) and isinstance(error, AirflowFailException)
    assert str(error).startswith(f"sbatch on {WHERE} exited 1: ")


@pytest.mark.parametrize(
    "stderr",
    [
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
        "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
        "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying",
        "flock: cannot open lock file: Disk quota exceeded",
        "",
    ],
)
def test_a_busy_or_unknown_failure_of_sbatch_stays_retryable(stderr: str) -> None:
    error = submission_error("sbatch", WHERE, 1, stderr, SLURM_REFUSALS)
    assert type(error) is SubmissionError
    assert not isinstance(error, AirflowFailException)


def test_qsub_refusals_are_read_in_pbs_words_and_slurms() -> None:
    unknown_queue = submission_error("qsub", WHERE, 1, "qsub: Unknown queue MSG=x", PBS_REFUSALS)
    assert isinstance(unknown_queue, AirflowFailException)
    wrapped = "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"
    assert isinstance(submission_error("qsub", WHERE, 1, wrapped, PBS_REFUSALS), SubmissionRefusedError)
    busy = "qsub: cannot connect to server pbs1 (errno=111)"
    assert type(submission_error("qsub", WHERE, 1, busy, PBS_REFUSALS)) is SubmissionError


def test_the_error_tree_says_which_errors_no_retry_can_fix() -> None:
    final = [JobSpecError("x"), ConnectionConfigError("x"), ClusterAuthError("x"), HostKeyMismatchError("x")]
    final.append(SubmissionRefusedError("sbatch", WHERE, 1, "Invalid account"))
    assert all(isinstance(error, AirflowFailException) for error in final)
    retryable = [ClusterUnreachableError("x"), SubmissionError("sbatch", WHERE, 1, "busy"), JobFailedError("x", None)]
    assert not any(isinstance(error, AirflowFailException) for error in retryable)
    # Still what callers caught before: a bad argument is a ValueError.
    assert isinstance(JobSpecError("x"), ValueError) and isinstance(ConnectionConfigError("x"), ValueError)
