"""A batch script kept beside the DAG, resources chosen when the run starts, and a clean skip.

* ``script="jobs/preprocess.sbatch"`` is read from the DAG's folder and rendered with Jinja, like a
  ``BashOperator``'s ``.sh`` file; its own ``#SBATCH`` lines stay.
* ``partition``, ``memory`` and ``time_limit`` come from the run's params: checked right after
  rendering, with the messages a literal value gets when the DAG is parsed.
* The script exits 99 when there is nothing to do: ``skip_on_exit_code=99`` skips the task.

Trigger it with ``{"shards": 0}`` to see the skip. Needs the ``slurm_local`` connection of the
local test cluster (``tests/cluster/up.sh``).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

with DAG(
    dag_id="slurm_script_file",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "slurm"],
    doc_md=__doc__,
    params={
        "shards": Param(3, type="integer", minimum=0),
        "partition": Param("debug", type="string"),
        "memory": Param("256M", type="string"),
        "minutes": Param(5, type="integer", minimum=1),
    },
) as dag:
    SlurmSubmitOperator(
        task_id="preprocess",
        slurm_conn_id="slurm_local",
        script="jobs/preprocess.sbatch",
        partition="{{ params.partition }}",
        memory="{{ params.memory }}",
        time_limit="{{ params.minutes }}",
        skip_on_exit_code=99,
        poll_interval=2,
    )
