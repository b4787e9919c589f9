"""What the array-element tests of every scheduler share: a value no shell may touch, running an
element trigger to its one event, a restarted triggerer, an element's numbered lines, and the jobs
slurmctld holds under a name."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol

from tests.integration import cluster

# Quotes, a command substitution, backticks, a variable, a backslash-n, a newline: an element's own
# env value arrives verbatim or the test fails.
NASTY = 'it\'s "$(echo no)" `echo no` $HOME\\n\nsecond line'


class Runs(Protocol):
    def run(self) -> Any: ...


class HasLines(Protocol):
    @property
    def lines(self) -> Sequence[str]: ...


async def first_event(trigger: Runs) -> dict[str, Any]:
    """The trigger's event (its element ended), as the triggerer would deliver it."""
    events: AsyncGenerator[Any, None] = trigger.run()
    event = await anext(events)
    await events.aclose()
    return dict(event.payload)


async def in_a_new_triggerer(triggers: Sequence[Runs], timeout_s: float = 180) -> list[dict[str, Any]]:
    """Run the triggers on an event loop of their own, as a new triggerer process would: its own
    connection or poller, its own collectors, nothing remembered of the one before."""
    return await asyncio.wait_for(asyncio.gather(*(first_event(trigger) for trigger in triggers)), timeout=timeout_s)


def numbered_lines(log: HasLines, tag: str) -> list[str]:
    """The element's own output lines (``<tag> line <n>``) in a task log."""
    return [line for line in log.lines if line.startswith(tag + " line ")]


def slurm_jobs_named(name: str) -> set[str]:
    """The jobs (an array counts once, by its id) slurmctld holds under the job name ``name``: squeue
    while it knows them, then its accounting. These are one test's submissions only, where sdiag's
    counter is every user's of the shared cluster (other engineers' tests run beside these)."""
    quoted = shlex.quote(name)
    out = cluster.ssh(
        f"squeue -h -t all -r --name={quoted} -o %F; sacct -n -X -P -S now-1days --name={quoted} -o JobID", check=False
    )
    return {line.split("_")[0] for line in out.split()}
