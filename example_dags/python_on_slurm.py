"""Map a Python function over 50 inputs as 50 Slurm jobs, then sum the results in Airflow.

``@task.slurm`` runs the function with the cluster's own ``python3`` (which needs cloudpickle, and
the Airflow worker's major.minor; no Airflow). The function's output streams into the task log as
the job runs, and its return value becomes the task's XCom, so ``total`` receives the 50 values.

Needs a ``slurm`` connection named ``slurm_local`` (``tests/cluster/up.sh`` writes one for the
local test cluster). The jobs wait in the triggerer, not in worker slots.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, task

with DAG(
    dag_id="python_on_slurm",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "slurm", "python"],
    doc_md=__doc__,
) as dag:

    @task.slurm(slurm_conn_id="slurm_local", cpus=1, memory="256M", time_limit=timedelta(minutes=5), poll_interval=1)
    def heavy_computation(x: int) -> int:
        import socket

        print(f"squaring {x} on {socket.gethostname()}")
        return x * x

    @task
    def total(values: list[int]) -> int:
        result = sum(values)
        print(f"the sum of the squares of 0..49 is {result}")
        return result

    total(heavy_computation.expand(x=list(range(50))))
