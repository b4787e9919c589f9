"""Delivery under fire: jobs that print fast while the triggerer is killed, and tries whose worker dies.

* ``dep_volume``: VOLUME_TASKS jobs print VOLUME_LINES numbered lines at about 100 lines/s each,
  all at once: every job waits for a barrier file the test creates once all tasks are deferred.
* ``dep_adopt_success`` / ``dep_adopt_failure``: try 1 submits its job, logs its PID and waits
  (it never defers); the test SIGKILLs it once the job ended. Try 2 must adopt the ended job. The
  failure variant's job fails for tries 1 and 2 (it reads the try that submitted it) and succeeds
  when try 3 submits a new one.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from scenario_common import JOB_NAME, SLURM_CONN_ID, VOLUME_LINES, VOLUME_TASKS, scenario_dag

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator


def fast_lines(count: int, tag: str) -> str:
    """Wait for the test's barrier, then print ``<tag> line <i> of <count>`` at about 100 lines/s."""
    barrier = '"$HOME/.airflow-hpc-barriers/{{ run_id }}"'
    return (
        f"while [ ! -e {barrier} ]; do sleep 0.2; done\n"
        f'for i in $(seq 1 {count}); do echo "{tag} line $i of {count}"; '
        "if [ $((i % 10)) -eq 0 ]; then sleep 0.1; fi; done"
    )


with scenario_dag("dep_volume"):
    for index in range(VOLUME_TASKS):
        SlurmSubmitOperator(
            task_id=f"job_{index}",
            slurm_conn_id=SLURM_CONN_ID,
            job_name=JOB_NAME,
            command=fast_lines(VOLUME_LINES, f"volume-{index}"),
            poll_interval=2,
        )


class DiesAfterSubmitting(SlurmSubmitOperator):
    """Try 1 stops between "Submitted" and deferring, so a test can kill its worker right there."""

    def trigger(self, *args: Any, **kwargs: Any) -> Any:
        from airflow.sdk import get_current_context

        if get_current_context()["ti"].try_number == 1:
            self.log.info("worker pid %d: waiting before deferring, to be killed", os.getpid())
            time.sleep(600)
        return super().trigger(*args, **kwargs)


for outcome, command in (
    ("success", 'for i in $(seq 1 30); do echo "adopted line $i"; done'),
    ("failure", 'for i in $(seq 1 30); do echo "adopted line $i"; done; [ "$SUBMITTED_BY_TRY" -ge 3 ]'),
):
    with scenario_dag(f"dep_adopt_{outcome}"):
        DiesAfterSubmitting(
            task_id="job",
            slurm_conn_id=SLURM_CONN_ID,
            job_name=JOB_NAME,
            command=command,
            env={"SUBMITTED_BY_TRY": "{{ ti.try_number }}"},
            poll_interval=1,
            retries=2,
            retry_delay=timedelta(seconds=2),
        )
