#!/bin/bash
# scripts/test.sh -- the whole test suite, from a fresh Debian machine (as root): bring up the local
# Slurm cluster, install (Python env, headless Chromium), check lint and types, build the docs, then
# run every test (unit, integration and deployment, the slow ones included).
#
# Most of the suite waits (on Slurm's whole-minute limits, on polls, on a real Airflow stack), so it
# runs as two pytest processes side by side: the tests of the clusters (Slurm, PBS, Grid Engine, on
# the one login node) in the foreground, and the unit tests with the AWS ones (moto servers, their
# own Airflow stack) in the background. The AWS side submits nothing to the cluster, so the cluster
# tests' counts of submissions (sdiag, accounting) stay theirs. Extra arguments run one pytest with them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/cluster/up.sh
bash scripts/install.sh
bash scripts/browser.sh   # headless Chromium for tests/deployment/ (the Add Connection form)
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/sphinx-build -q -W --keep-going -b html docs out/docs-html
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi

AWS_AND_UNIT=(tests/unit tests/integration/batch tests/integration/ec2 tests/integration/aws_setup tests/deployment/batch)
mkdir -p out
aws_log=out/pytest-aws-and-unit.log
.venv/bin/python -m pytest "${AWS_AND_UNIT[@]}" >"$aws_log" 2>&1 &
aws_pid=$!
# Stopped by its PID if this script is interrupted, so no pytest outlives the run.
trap 'kill "$aws_pid" 2>/dev/null || true' EXIT

cluster_log=out/pytest-cluster.log
set +e
.venv/bin/python -m pytest tests "${AWS_AND_UNIT[@]/#/--ignore=}" 2>&1 | tee "$cluster_log"
cluster_status=${PIPESTATUS[0]}
set -e
aws_status=0
wait "$aws_pid" || aws_status=$?
trap - EXIT

echo
echo "=================== unit and AWS tests (run beside the cluster tests) ==================="
cat "$aws_log"
echo
echo "cluster tests: pytest exit $cluster_status; unit and AWS tests: pytest exit $aws_status"
grep -hE '^(FAILED|ERROR) ' "$cluster_log" "$aws_log" || true
[ "$cluster_status" -eq 0 ] && [ "$aws_status" -eq 0 ]
