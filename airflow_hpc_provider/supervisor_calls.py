"""Questions a trigger asks Airflow's API server, through the link its process's supervisor offers.

Triggers never talk to the database: the triggerer's supervisor relays their requests (XCom reads
and writes, task instance counts). ``airflow dags test`` runs a trigger inline instead, in the
task's own process, over in-process comms that only speak synchronously.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def through_supervisor(sync_call: Callable[[], T], async_call: Callable[[], Any]) -> T:
    """Run a call the way this process's supervisor link allows.

    The triggerer's link speaks asynchronously (``asend``). Under ``airflow dags test`` there is no
    ``asend`` (``XCom.aset`` fails there with an AttributeError): the synchronous call is used, in a
    thread so the loop keeps running; the task's thread is waiting on this very trigger, so nothing
    else uses the comms meanwhile.
    """
    from airflow.sdk.execution_time import task_runner

    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if comms is not None and not hasattr(comms, "asend"):
        return await asyncio.to_thread(sync_call)
    result: T = await async_call()
    return result
