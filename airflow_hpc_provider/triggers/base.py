"""What every trigger of this provider does the same way; a backend's trigger only declares.

A trigger is stored as JSON while its task is deferred and rebuilt by whichever triggerer runs it,
so it is nothing but plain fields plus a way to follow its job with the engine (:mod:`watching`):

* ``fields``: the constructor's arguments, stored as attributes of the same names and serialized
  as they are (every field JSON-plain): ``serialize()`` is written once, here;
* :meth:`follow`: watch the job to its end through the engine's source for it and return the
  event's payload (the outcome, plus what ``execute_complete`` needs back);
* :meth:`stop`: stop the job on its system when a user stops the task (``on_kill``).

``run()`` yields exactly one event. ``on_kill()`` stops the job unless the trigger already saw it
end, the task does not own it, or the task is still deferred on it. Airflow calls ``on_kill`` on a
user's action (marked failed or success, cleared), but also on a triggerer that lost its triggers
to another one while it was too slow to heartbeat: :mod:`.handover` tells the two apart, so a
handover stops nothing. A triggerer that stops or restarts does not call ``on_kill``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_hpc_provider.triggers.handover import deferral_is_current
from airflow_hpc_provider.watching.events import Outcome

# How long on_kill may wait for Airflow to say whether the task still defers on this trigger.
HANDOVER_QUESTION_TIMEOUT_S = 20.0
# Stops under way: referenced until done (on_kill's own task may be cancelled before them).
_STOPPING: set[asyncio.Future[None]] = set()


class HpcTrigger(BaseTrigger):
    """Base of every trigger of this provider: see the module docstring."""

    fields: ClassVar[tuple[str, ...]] = ()
    # What stop() does, as (doing, done), in the task log: ("Cancelling", "Cancelled").
    stop_words: ClassVar[tuple[str, str]] = ("Cancelling", "Cancelled")

    def __init__(self) -> None:
        super().__init__()
        self._seen_ending = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {name: getattr(self, name) for name in self.fields}

    # -- what a backend says -----------------------------------------------------------------------

    def describe(self) -> str:
        """The job in the task log's words: ``Slurm job 1234 on slurm_local``."""
        raise NotImplementedError

    async def follow(self) -> dict[str, Any]:
        """Watch the job to its end; return the event's payload (``WatchOutcome.to_dict()`` and more)."""
        raise NotImplementedError

    def ending_seen(self, payload: dict[str, Any]) -> bool:
        """Whether, after this payload, there is nothing left for ``on_kill`` to stop."""
        return bool(payload["kind"] == Outcome.ENDED)

    @property
    def owns_job(self) -> bool:
        """False for a task that only watches a job it did not submit: ``on_kill`` leaves it alone."""
        return True

    async def stop(self) -> None:
        """Stop the job on its system now (cancel, terminate)."""
        raise NotImplementedError

    # -- the same for every backend ----------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        payload = await self.follow()
        self._seen_ending = self.ending_seen(payload)
        yield TriggerEvent(payload)

    async def on_kill(self) -> None:
        """A user marked the task failed/success or cleared it, or another triggerer took this
        trigger over: stop the job in the first case only (see the module docstring)."""
        if self._seen_ending or not self.owns_job:
            return
        # Shielded: while this trigger still runs, the triggerer cancels it again at each of its
        # loops, which would cut the question (or the stop) short.
        stopping = asyncio.ensure_future(self._stop_unless_handed_over())
        _STOPPING.add(stopping)
        stopping.add_done_callback(_STOPPING.discard)
        await asyncio.shield(stopping)

    async def _stop_unless_handed_over(self) -> None:
        ti = getattr(self, "task_instance", None)
        if ti is not None:
            try:
                current = await asyncio.wait_for(deferral_is_current(ti), HANDOVER_QUESTION_TIMEOUT_S)
            except Exception as error:  # TimeoutError included: Airflow did not say, so do as it asked
                self.log.warning("could not learn whether the task still defers on %s (%r)", self.describe(), error)
                current = False
            if current:
                self.log.info(
                    "%s left running: the task is still deferred on it, so another triggerer took this "
                    "trigger over; this one only stops watching",
                    self.describe(),
                )
                return
        doing, done = self.stop_words
        self.log.info("%s %s (task stopped by a user)", doing, self.describe())
        await self.stop()
        self.log.info("%s %s", done, self.describe())
