"""Whether a trigger that Airflow cancels "by user action" still serves its task: a user's stop, or a handover.

Airflow 3.3's triggerer cancels every trigger it runs but no longer has assigned with its user-action
message, for which it calls ``on_kill``. A user's action looks like that (the task marked failed or
success, or cleared: its trigger row is deleted), but so does a handover: a triggerer whose heartbeat
came later than ``[triggerer] triggerer_health_check_threshold`` (a loaded machine, a long pause, a
slow database) finds on resuming that another triggerer took its triggers; and on SQLite two
triggerers can claim the same new trigger at once. Stopping the job then fails a healthy task.

What tells them apart is the task instance: after a handover it is still deferred, in the try that
deferred on this trigger. The operator records that try's number in an XCom
(:data:`DEFERRAL_XCOM_KEY`) just before it defers. Airflow deletes a task instance's XComs when a new
try starts, so a cleared task that already runs (or deferred) again holds another number or none;
a task marked failed or success is no longer deferred.
"""

from __future__ import annotations

from typing import Any

from airflow_hpc_provider.supervisor_calls import through_supervisor

DEFERRAL_XCOM_KEY = "hpc_deferred_try"


def record_deferral(ti: Any) -> None:
    """On the worker, just before the task defers on one of this provider's triggers."""
    ti.xcom_push(key=DEFERRAL_XCOM_KEY, value=int(ti.try_number))


async def deferral_is_current(ti: Any) -> bool:
    """Whether the task instance is still deferred in the try ``ti`` is (raises when Airflow cannot say)."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetTICount, TICount
    from airflow.sdk.execution_time.xcom import XCom

    map_index = -1 if ti.map_index is None else int(ti.map_index)
    where: dict[str, Any] = {
        "dag_id": ti.dag_id,
        "task_ids": [ti.task_id],
        "run_ids": [ti.run_id],
        "map_index": map_index,
    }

    async def count_async() -> int:
        response = await task_runner.SUPERVISOR_COMMS.asend(GetTICount(states=["deferred"], **where))
        if not isinstance(response, TICount):
            raise TypeError(f"the triggerer's supervisor answered {type(response).__name__} to a task count")
        return response.count

    deferred = await through_supervisor(
        lambda: task_runner.RuntimeTaskInstance.get_ti_count(states=["deferred"], **where), count_async
    )
    if not deferred:
        return False
    xcom = {
        "key": DEFERRAL_XCOM_KEY,
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "map_index": map_index,
    }
    recorded = await through_supervisor(lambda: XCom.get_one(**xcom), lambda: XCom.aget_one(**xcom))
    return isinstance(recorded, int) and recorded == int(ti.try_number)
