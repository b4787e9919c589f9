"""Tell a scheduler that refused a job as asked from one that was only busy.

``sbatch`` and ``qsub`` exit non-zero both when the request is wrong (an account that is not
yours, a partition that does not exist) and when the controller is briefly unreachable. Only the
first kind is final: retrying the same request cannot succeed, so the task fails at once instead of
burning its retries (:class:`~airflow_hpc_provider.errors.SubmissionRefusedError`). Anything not
recognised here stays retryable: when in doubt, a retry costs less than a lost run.
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow_hpc_provider.errors import SubmissionError, SubmissionRefusedError

# Slurm's own words (slurm_strerror and sbatch's option parser), as sbatch prints them.
SLURM_REFUSALS: tuple[str, ...] = (
    "invalid account",
    "invalid partition",
    "invalid qos",
    "invalid wckey",
    "invalid generic resource",
    "invalid feature specification",
    "invalid license",
    "invalid node name specified",
    "invalid time limit",
    "invalid job array specification",
    "requested node configuration is not available",
    "more processors requested than permitted",
    "node count specification invalid",
    "memory required by task is not available",
    "access/permission denied",
    "unrecognized option",
    "invalid option",
    "batch script is empty",
)

# PBS Pro / OpenPBS / Torque qsub (the Torque wrappers of Slurm print Slurm's words above).
PBS_REFUSALS: tuple[str, ...] = (
    *SLURM_REFUSALS,
    "unknown queue",
    "unknown resource",
    "bad uid for job execution",
    "unauthorized request",
    "illegal attribute or resource value",
    "job exceeds queue resource limits",
    "job rejected by all possible destinations",
    "illegal -l value",
)


def submission_error(
    command: str, where: str, exit_status: int | None, output: str, refusals: Sequence[str]
) -> SubmissionError:
    """The error for a failed submission: final when the scheduler's words say the request is wrong."""
    lowered = output.lower()
    if any(words in lowered for words in refusals):
        return SubmissionRefusedError(command, where, exit_status, output)
    return SubmissionError(command, where, exit_status, output)
