"""What the deployment tests' DAG files share (not a DAG file itself: see .airflowignore).

Every job's Slurm name carries the DAG run's id, so a test finds exactly the jobs of its own run in
``sacct`` (others' jobs share the cluster). Jobs print numbered lines slowly, so a test can
tell whether each line reached the task log exactly once.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

SLURM_CONN_ID = "slurm_local"
PBS_CONN_ID = "pbs_local"
SGE_CONN_ID = "sge_local"
JOB_NAME = "airflow-dep-{{ run_id }}-{{ task.task_id }}"
WORKER_SLOT_TASKS = 20
WORKER_SLOT_JOB_S = 30
RESTART_TASKS = 4
RESTART_LINES = 45
LOG_LINES = 5
# dep_batch.py: AWS Batch jobs held in the test's moto server (tests/deployment/batch).
BATCH_CONN_ID = "aws_dep_batch"
BATCH_RESTART_TASKS = 10
BATCH_QUIET_TASKS = 4
VOLUME_TASKS = 10
VOLUME_LINES = 3000
# dep_arrays.py: mapped tasks as Slurm arrays (the test cluster's MaxArraySize is 6).
ARRAY_TASKS = 20
ARRAY_LINES = 300
ARRAY_FAILING_INDEX = 7
ARRAY_STOPPED_INDEX = 3
PBS_ARRAY_TASKS = 6
PBS_ARRAY_LINES = 200
PBS_ARRAY_FAILING_INDEX = 2
PBS_ARRAY_STOPPED_INDEX = 4
ARRAY_RESTART_TASKS = 12
ARRAY_RESTART_LINES = 40
SCENARIO_DAG_IDS = (
    "dep_worker_slots",
    "dep_mark_failed",
    "dep_clear",
    "dep_execution_timeout",
    "dep_pbs_mark_failed",
    "dep_task_log",
    "dep_restart",
    "dep_ha",
    "dep_frozen",
    "dep_trivial",
    "dep_volume",
    "dep_adopt_success",
    "dep_adopt_failure",
    "dep_arrays",
    "dep_arrays_restart",
    "slurm_array_map",
    "dep_pbs_arrays",
)


def numbered_lines(count: int, tag: str, delay_s: float = 1) -> str:
    """A job that prints ``<tag> line 1 of <count>`` ... one line every ``delay_s`` seconds."""
    return f'for i in $(seq 1 {count}); do echo "{tag} line $i of {count}"; sleep {delay_s}; done'


def scenario_dag(dag_id: str) -> DAG:
    return DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_tasks=64,
        tags=["deployment-test"],
    )


# dep_batch_arrays.py: mapped Batch tasks as array jobs (the test connection caps arrays at 6).
BATCH_ARRAY_TASKS = 12
BATCH_ARRAY_FAILING_INDEX = 7
BATCH_ARRAY_STOPPED_INDEX = 3
BATCH_MAX_ARRAY_SIZE = 6
