"""Run code from a git repository, pinned to the commit ``main`` pointed at when each task started.

Every map index (and every retry) of ``analyse`` runs the same commit, even if someone pushes to
``main`` while the tasks run; the commit is logged and pushed to XCom as ``git_sha``. The checkout
is made once on the cluster, under a directory named after the commit, and shared.

Needs a ``slurm`` connection named ``slurm_local`` and an ``ssh`` connection named
``git_deploy_key`` holding the repository's deploy key (``private_key``) and its host's key
(``host_key``). The repository is read from ``AIRFLOW_HPC_EXAMPLE_GIT_REPO`` when set (the tests
point it at a repository of their own), and must hold ``analysis/run.sh``. See docs/git_pinned.rst.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

REPO = os.environ.get("AIRFLOW_HPC_EXAMPLE_GIT_REPO", "git@github.com:example-org/analysis.git")

with DAG(
    dag_id="git_pinned",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "slurm", "git"],
    doc_md=__doc__,
) as dag:
    SlurmSubmitOperator.partial(
        task_id="analyse",
        slurm_conn_id="slurm_local",
        # "path": the job starts in analysis/ of the checkout; a relative working_dir would be
        # resolved inside it, an absolute one kept as given.
        git={"repo": REPO, "ref": "main", "path": "analysis", "key_conn_id": "git_deploy_key"},
        command='echo "part $PART runs commit $(git rev-parse HEAD) in $(pwd)"\nsh ./run.sh "$PART"',
        memory="256M",
        time_limit=timedelta(minutes=5),
        poll_interval=1,
    ).expand(env=[{"PART": "a"}, {"PART": "b"}])
