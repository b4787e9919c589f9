"""``Ec2ReaperOperator``: terminate this provider's instances whose task instance is no longer running.

A throw-away instance outlives its task only when the task's own end never ran (a worker killed
hard, a triggerer lost with the trigger's terminate): the reaper lists instances by the provider's
tags and terminates those whose task instance is over (see ``dialects/ec2.py``'s reap rules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator, Context

import airflow_hpc_provider.aws_extra  # noqa: F401  (first: names the extra when it is missing)
from airflow_hpc_provider.dialects import ec2
from airflow_hpc_provider.hooks.ec2 import Ec2InstanceHook

TaskStateLookup = Callable[[ec2.TaskTags], "str | None"]


@dataclass(frozen=True)
class ReapReport:
    instance_id: str
    reason: str
    terminated: bool


def airflow_task_state(owner: ec2.TaskTags) -> str | None:
    """The task instance's state through the Task SDK (the worker's execution API), None if unknown."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    states = RuntimeTaskInstance.get_task_states(
        dag_id=owner.dag_id,
        task_ids=[owner.task_id],
        run_ids=[owner.run_id],
        map_index=None if owner.map_index < 0 else owner.map_index,
    )
    run = states.get(owner.run_id) or {}
    name = owner.task_id if owner.map_index < 0 else f"{owner.task_id}_{owner.map_index}"
    if name not in run:
        return None
    state = run[name]
    return None if state is None else str(getattr(state, "value", state))


class Ec2ReaperOperator(BaseOperator):
    """Terminate this provider's instances whose task instance is no longer running.

    :param dry_run: only report what would be terminated (default).
    :param min_age: leave younger instances alone (their task may not have recorded its state yet).
    :param backend: only instances launched through this connection id (default: any).
    :param task_state: how to learn a task instance's state; default: Airflow's own, through the Task SDK.
    """

    def __init__(
        self,
        *,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        tag_prefix: str = ec2.DEFAULT_TAG_PREFIX,
        backend: str | None = None,
        dry_run: bool = True,
        min_age: timedelta = timedelta(minutes=15),
        task_state: TaskStateLookup | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.tag_prefix = tag_prefix
        self.backend = backend
        # BaseOperator already has a dry_run() method: keep the flag under another name.
        self.report_only = dry_run
        self.min_age = min_age
        self.task_state = task_state

    def execute(self, context: Context) -> list[dict[str, Any]]:
        return [report.__dict__ for report in self.reap()]

    def reap(self) -> list[ReapReport]:
        hook = Ec2InstanceHook(self.aws_conn_id, self.region_name)
        lookup = self.task_state or airflow_task_state
        only = {f"{self.tag_prefix}:backend": self.backend} if self.backend else None
        now = datetime.now(UTC)
        reports: list[ReapReport] = []
        doomed: list[str] = []
        for instance in hook.tagged(self.tag_prefix, only):
            owner = ec2.TaskTags.from_tags(instance.tags, self.tag_prefix)
            candidate = ec2.ReapCandidate(instance.instance_id, instance.state, instance.launched, owner)
            state = lookup(owner) if owner is not None else None
            reason = ec2.reap_reason(candidate, state, now, self.min_age)
            if reason is None:
                continue
            verb = "Would terminate" if self.report_only else "Terminating"
            self.log.info("%s %s (%s): %s", verb, instance.instance_id, instance.state, reason)
            reports.append(ReapReport(instance.instance_id, reason, terminated=not self.report_only))
            doomed.append(instance.instance_id)
        if doomed and not self.report_only:
            hook.terminate(doomed)
        self.log.info(
            "%d orphaned instance(s) %s",
            len(doomed),
            "found (dry run: none terminated)" if self.report_only else "terminated",
        )
        return reports
