"""Jobs that print numbered lines slowly, so a test can count each line in the task log."""

from __future__ import annotations

from scenario_common import (
    JOB_NAME,
    LOG_LINES,
    RESTART_LINES,
    RESTART_TASKS,
    SLURM_CONN_ID,
    numbered_lines,
    scenario_dag,
)

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

with scenario_dag("dep_task_log"):
    SlurmSubmitOperator(
        task_id="job",
        slurm_conn_id=SLURM_CONN_ID,
        job_name=JOB_NAME,
        command=numbered_lines(LOG_LINES, "streamed"),
        poll_interval=1,
    )

for scenario in ("restart", "ha", "frozen"):
    with scenario_dag(f"dep_{scenario}"):
        for index in range(RESTART_TASKS):
            SlurmSubmitOperator(
                task_id=f"job_{index}",
                slurm_conn_id=SLURM_CONN_ID,
                job_name=JOB_NAME,
                command=numbered_lines(RESTART_LINES, f"{scenario}-{index}"),
                poll_interval=2,
            )

with scenario_dag("dep_trivial"):  # bench/peers_slurm.py --overhead: Airflow's cost around a job
    SlurmSubmitOperator(task_id="job", slurm_conn_id=SLURM_CONN_ID, job_name=JOB_NAME, command="true", poll_interval=1)
