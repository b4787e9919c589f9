"""How a PBS or Grid Engine hook reads what its submission script answered (hooks/submission.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from airflow_hpc_provider.dialects import pbs, pbs_submit, sge
from airflow_hpc_provider.dialects.pbs_qstat import PbsFlavour
from airflow_hpc_provider.errors import SubmissionError, SubmissionRefusedError
from airflow_hpc_provider.hooks import pbs as pbs_hook
from airflow_hpc_provider.hooks import sge as sge_hook
from airflow_hpc_provider.hooks.command_result import CommandResult
from airflow_hpc_provider.hooks.refusals import PBS_REFUSALS
from airflow_hpc_provider.hooks.submission import read_submission
from airflow_hpc_provider.jobs import JobKey, JobSpec

WHERE = "hpcuser@login1:22"
KEY = JobKey(task_digest="3e3e187859dfa6450327", try_number=2)
SPEC = JobSpec(command="echo hi", job_name="etl")


def answer(exit_status: int | None, stdout: str = "", stderr: str = "") -> CommandResult:
    return CommandResult(exit_status, stdout.encode(), stderr.encode())


def read(result: CommandResult) -> pbs_submit.PbsSubmitOutcome:
    return read_submission(result, pbs_submit.parse_submit_output, "qsub", WHERE, PBS_REFUSALS)


def test_a_submission_that_printed_its_job_id_is_read_by_the_dialects_parser() -> None:
    outcome = read(answer(0, "SUBMITTED 4242.server 2\nSTATE Q\n"))
    assert (outcome.job_id, outcome.adopted, outcome.state, outcome.try_number) == ("4242.server", False, "Q", 2)


def test_a_refusal_in_the_schedulers_words_is_final_and_quotes_its_stderr() -> None:
    with pytest.raises(SubmissionRefusedError) as raised:
        read(answer(1, "", "qsub: Unknown queue MSG=requested queue not found\n"))
    assert raised.value.exit_status == 1 and "Unknown queue" in raised.value.stderr


@pytest.mark.parametrize(
    ("result", "said"),
    [
        (answer(2, "qsub: cannot connect to server\n", ""), "cannot connect to server"),  # stdout when no stderr
        (answer(None, "", "connection dropped"), "connection dropped"),  # no exit status
        (answer(0, "warnings only\n"), "no job id in the submission's output"),  # exit 0, no id
    ],
)
def test_a_failed_or_unreadable_answer_stays_retryable_and_says_what_came_back(
    result: CommandResult, said: str
) -> None:
    with pytest.raises(SubmissionError) as raised:
        read(result)
    assert not isinstance(raised.value, SubmissionRefusedError)
    assert said in raised.value.stderr and raised.value.where == WHERE


@dataclass
class RecordingTransport:
    """Our own transport seam: answers every script with one result and keeps what it ran."""

    result: CommandResult
    ran: list[str] = field(default_factory=list)

    @dataclass(frozen=True)
    class Target:
        where: str = WHERE

    target: Target = field(default_factory=Target)

    async def run(self, script: str) -> CommandResult:
        self.ran.append(script)
        return self.result


def test_the_pbs_and_sge_hooks_run_their_dialects_submit_script_in_one_round_trip_and_read_its_answer() -> None:
    batch = pbs.render_script(SPEC, PbsFlavour.TORQUE)
    transport = RecordingTransport(answer(0, "ADOPTED 17.server 1\nSTATE R\n"))
    outcome = asyncio.run(
        pbs_hook.submit_job(transport, SPEC, batch, PbsFlavour.TORQUE, key=KEY, log_dir="logs", env={})  # type: ignore[arg-type]
    )
    assert outcome.adopted and outcome.try_number == 1
    assert len(transport.ran) == 1 and "qsub -N" in transport.ran[0] and batch in transport.ran[0]

    batch = sge.render_script(SPEC)
    transport = RecordingTransport(
        answer(1, "", "Unable to run job: Job was rejected because job requests unknown queue")
    )
    with pytest.raises(SubmissionRefusedError):
        asyncio.run(sge_hook.submit_job(transport, SPEC, batch, key=KEY, log_dir="logs", env={"A": "b"}))  # type: ignore[arg-type]
    assert len(transport.ran) == 1 and "qsub -terse" in transport.ran[0] and batch in transport.ran[0]
