"""Book one Slurm allocation, run several tasks inside it (two at once), release it.

The queue wait is paid once, by ``book``; each tenant then starts in about one SSH round trip.
Needs a ``slurm`` connection named ``slurm_local`` (``tests/cluster/up.sh`` writes one for the
local test cluster).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.slurm_tenant import (
    SlurmAllocationOperator,
    SlurmReleaseOperator,
    SlurmTenantOperator,
)

RESERVATION = "example-tenant-pool"

with DAG(
    dag_id="slurm_tenant_pool",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "slurm"],
    doc_md=__doc__,
) as dag:
    book = SlurmAllocationOperator(
        task_id="book",
        slurm_conn_id="slurm_local",
        reservation=RESERVATION,
        cpus=1,
        memory="512M",
        time_limit=timedelta(minutes=10),
    )
    prepare = SlurmTenantOperator(
        task_id="prepare",
        slurm_conn_id="slurm_local",
        reservation=RESERVATION,
        command='echo "preparing in allocation $SLURM_JOB_ID on $(hostname)"; sleep 1; echo "prepared"',
        poll_interval=1,
    )
    # These two run at the same time, in the same allocation.
    shards = [
        SlurmTenantOperator(
            task_id=f"shard_{shard}",
            slurm_conn_id="slurm_local",
            reservation=RESERVATION,
            command=('for step in 1 2 3; do echo "shard $SHARD step $step in allocation $SLURM_JOB_ID"; sleep 1; done'),
            env={"SHARD": str(shard)},
            poll_interval=1,
        )
        for shard in (1, 2)
    ]
    summarise = SlurmTenantOperator(
        task_id="summarise",
        slurm_conn_id="slurm_local",
        reservation=RESERVATION,
        command='echo "all shards done for run {{ run_id }}"',
        poll_interval=1,
    )
    release = SlurmReleaseOperator(task_id="release", slurm_conn_id="slurm_local", reservation=RESERVATION)

    book >> prepare >> shards >> summarise >> release
