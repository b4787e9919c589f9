"""A scheduler's submission over SSH: the dialect's script in one round trip, its answer read.

Every SSH scheduler submits the same way: its pure dialect builds one script (lock, adopt an
earlier try's job, or submit anew; :mod:`~airflow_hpc_provider.dialects.pbs_submit`,
:func:`~airflow_hpc_provider.dialects.sge.submit_script`), the login node runs it, and the dialect
parses what it printed. :func:`over_ssh` makes a hook's ``submit_job`` from those two functions,
with the dialect's own typed parameters after the transport, so a hook does not write them again;
:func:`read_submission` turns a failed or unreadable answer into the error
(:mod:`~airflow_hpc_provider.hooks.refusals` tells a refusal from a busy scheduler).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from airflow_hpc_provider.hooks.command_result import CommandResult
from airflow_hpc_provider.hooks.refusals import submission_error
from airflow_hpc_provider.hooks.ssh import SshTransport

P = ParamSpec("P")
T = TypeVar("T")


def read_submission(
    result: CommandResult, parse: Callable[[str], T], command: str, where: str, refusals: Sequence[str]
) -> T:
    """What a submission script printed, parsed by the dialect's ``parse``; else the error, in the
    words that came back: the script's stderr (its stdout when stderr is empty) when it failed,
    what was missing (``parse``'s ``ValueError``) when it printed no job id."""
    if result.exit_status == 0:
        try:
            return parse(result.text)
        except ValueError as error:  # no job id: say what came back instead
            raise submission_error(command, where, result.exit_status, str(error), refusals) from None
    raise submission_error(command, where, result.exit_status, result.error_text or result.text, refusals)


def over_ssh(
    script: Callable[P, str], parse: Callable[[str], T], command: str, refusals: Sequence[str]
) -> Callable[Concatenate[SshTransport, P], Coroutine[Any, Any, T]]:
    """``submit_job(transport, <script's arguments>)``: adopt the live job of this task instance, or
    submit a new one, in one SSH round trip."""

    async def submit_job(transport: SshTransport, /, *args: P.args, **kwargs: P.kwargs) -> T:
        result = await transport.run(script(*args, **kwargs))
        return read_submission(result, parse, command, transport.target.where, refusals)

    return submit_job
