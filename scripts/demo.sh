#!/bin/bash
# scripts/demo.sh -- the main job, from a fresh Debian machine (as root): bring up the local Slurm
# cluster, install the provider, run example_dags/slurm_hello.py through Airflow on its embedded
# SQLite, and print the task's log.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/cluster/up.sh
bash scripts/install.sh
set -a; . "${HPC_CLUSTER_DIR:-/tmp/airflow-hpc-cluster}/airflow.env"; set +a
export AIRFLOW_HOME=$PWD/out/airflow-home
export AIRFLOW__CORE__DAGS_FOLDER=$PWD/example_dags AIRFLOW__CORE__LOAD_EXAMPLES=False
mkdir -p "$AIRFLOW_HOME"
.venv/bin/airflow db migrate >out/db-migrate.log 2>&1
status=0
.venv/bin/airflow dags test slurm_hello >out/slurm_hello.log 2>&1 || status=$?
echo "=== task log of slurm_hello.hello (full Airflow output: out/slurm_hello.log) ==="
# Keep the records the operator and its trigger logged (a record may span lines, e.g. the script),
# without the logger tag Airflow appends to each.
awk '
  function flush() {
    if (record ~ /\[airflow(\.task\.operators\.airflow_hpc_provider|_hpc_provider)[^]]*\] loc=/) {
      sub(/ +\[airflow[^]]*\] loc=[^\n]*$/, "", record); print record
    }
    record = ""
  }
  /^[0-9]{4}-[0-9]{2}-[0-9]{2}T/ { flush(); record = $0; next }
  { record = record "\n" $0 }
  END { flush() }
' out/slurm_hello.log
grep -o "DagRun Finished: dag_id=slurm_hello.*state=[a-z]*" out/slurm_hello.log | sed 's/,.*state=/ ... state=/' || true
exit "$status"
