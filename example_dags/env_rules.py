"""Layered environment rules: the cluster's connection says what every job needs, named groups
say what some jobs need, and the task adds its own (docs/env_rules.rst).

The ``slurm_local`` connection's extra carries the rules of :func:`example_connection_extra`
(paste them into the connection's "Environment rules" and "Environment rule groups" fields in
the admin UI, as JSON). The ``gpu`` group's rules hold only on a ``gpu*`` partition: on the local
test cluster's ``debug`` partition they are skipped, and the task log says so.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator


def example_connection_extra() -> dict[str, Any]:
    """The rules this example expects on its connection (JSON in the connection's extra)."""
    return {
        "env_rules": [
            {"name": "SCRATCH_ROOT", "set": "/tmp/airflow-hpc-scratch"},
            {"name": "PATH", "prepend": "/opt/site/bin"},
        ],
        "env_groups": {
            "analysis": [
                {"init": ["echo preparing the analysis environment"]},
                {"name": "PATH", "prepend": "/opt/analysis/bin"},
                {"name": "RESULTS", "set": "${SCRATCH_ROOT}/results"},
            ],
            "gpu": [
                {"init": ["module load cuda"], "when": {"partition": "gpu*"}},
                {"name": "CUDA_CACHE_PATH", "set": "${SCRATCH_ROOT}/cuda-cache", "when": {"partition": "gpu*"}},
            ],
        },
    }


with DAG(
    dag_id="example_env_rules",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "slurm"],
    doc_md=__doc__,
) as dag:
    SlurmSubmitOperator(
        task_id="analyse",
        slurm_conn_id="slurm_local",
        env_groups=["analysis", "gpu"],
        env_rules=[
            {"name": "RUN_LABEL", "set": "run {{ run_id }} of ${RESULTS}"},
            {"name": "OMP_NUM_THREADS", "set": "4", "when": {"partition": "debug"}},
        ],
        command=(
            'case ":$PATH:" in *:/opt/analysis/bin:/opt/site/bin:*) '
            'echo "analysis tools found at /opt/analysis/bin";; esac\n'
            'echo "results go to $RESULTS ($RUN_LABEL), $OMP_NUM_THREADS threads"\n'
            'echo "CUDA cache: ${CUDA_CACHE_PATH:-not set off the gpu partitions}"'
        ),
        cpus=1,
        memory="256M",
        time_limit=timedelta(minutes=5),
        poll_interval=2,
    )
