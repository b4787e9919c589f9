"""Layered env rules on the real cluster: a connection's rules, two of its groups and the task's
own rules, with conditions and ${} expansion, on Slurm, PBS (the Torque wrappers) and Grid Engine
in ONE DAG (one ``airflow dags test`` for all keeps the CI time small). The connections
``slurm_env_rules``, ``pbs_env_rules`` and ``sge_env_rules`` are the local ones plus
:data:`CONNECTION_RULES` (the test defines them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG

from airflow_hpc_provider.operators.pbs import PbsOperator
from airflow_hpc_provider.operators.sge import SgeOperator
from airflow_hpc_provider.operators.slurm import SlurmSubmitOperator

INJECTED = "/tmp/airflow-hpc-env-rules-injected"
BASE = f'it\'s "quoted" $(touch {INJECTED}) `touch {INJECTED}`\nsecond line $HOME ${{PATH}}'
CONNECTION_RULES: dict[str, Any] = {
    "env_rules": [
        {"name": "PATH", "prepend": "/opt/conn/bin"},
        {"name": "BASE", "set": BASE.replace("${", "$${")},
        {"init": ["echo init line of the connection"]},
    ],
    "env_groups": {
        "tools": [
            {"name": "PATH", "append": "/opt/tools/bin"},
            {"name": "DERIVED", "set": "${BASE}|tools"},
        ],
        "site": [
            {"name": "ON_GPU", "set": "never", "when": {"partition": "gpu*"}},
            {
                "name": "ON_SLURM_DEBUG",
                "set": "slurm `debug` $(x)",
                "when": {"scheduler": "slurm", "partition": "debug"},
            },
            {"name": "ON_SGE_QUEUE", "set": "sge 'all.q'", "when": {"scheduler": "sge", "queue": "all.q"}},
        ],
        "unused": [{"name": "NEVER", "set": "never"}],
    },
}
TASK_RULES = [
    {"name": "PATH", "prepend": "/opt/task/bin"},
    {"name": "TASK_VALUE", "set": "${DERIVED}\n$(touch " + INJECTED + ") trailing\n"},
]
NAMES = ("BASE", "DERIVED", "TASK_VALUE", "ON_SLURM_DEBUG", "ON_SGE_QUEUE", "ON_GPU", "NEVER", "PLAIN")
# Each variable's value in base64 (unset: "unset"), the node's PATH, and carriers left behind.
REPORT = (
    "\n".join(
        f'if [ -n "${{{name}+x}}" ]; then printf "{name}=%s\\n" "$(printf %s "${name}" | base64 -w0)"; '
        f'else echo "{name}=unset"; fi'
        for name in NAMES
    )
    + '\necho "PATH=$PATH"\necho "CARRIERS_LEFT=$(env | grep -c "^AIRFLOW_HPC_ENV_")"\n'
)

with DAG(dag_id="it_env_rules", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["test"]):
    SlurmSubmitOperator(
        task_id="slurm",
        slurm_conn_id="slurm_env_rules",
        command=REPORT,
        env={"PLAIN": "plain $(value)"},
        env_groups=["tools", "site"],
        env_rules=TASK_RULES,
        poll_interval=1,
    )
    PbsOperator(
        task_id="pbs",
        pbs_conn_id="pbs_env_rules",
        command=REPORT,
        env={"PLAIN": "plain $(value)"},
        env_groups=["tools", "site"],
        env_rules=TASK_RULES,
        poll_interval=1,
    )
    SgeOperator(
        task_id="sge",
        sge_conn_id="sge_env_rules",
        command=REPORT,
        env={"PLAIN": "plain $(value)"},
        env_groups=["tools", "site"],
        env_rules=TASK_RULES,
        poll_interval=1,
    )
