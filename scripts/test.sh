#!/bin/bash
# scripts/test.sh -- the whole test suite, from a fresh Debian machine (as root): bring up the local
# Slurm cluster, install (Python env, headless Chromium), check lint and types, build the docs, then
# run every test (unit, integration and deployment, the slow ones included).
#
# Most of the suite waits (on Slurm's whole-minute limits, on polls, on a real Airflow stack), so it
# runs as two pytest processes side by side: the Slurm tests (PBS too: the test cluster's qsub is
# Slurm's) in the foreground, and the unit, AWS (moto servers) and Grid Engine tests in the
# background, with an Airflow stack of their own. The background submits nothing to Slurm, so the
# Slurm tests' counts of submissions (sdiag, accounting) stay theirs. Extra arguments run one pytest
# with them.
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

BESIDE=(
    tests/unit
    tests/integration/batch tests/integration/ec2 tests/integration/aws_setup tests/deployment/batch
    tests/integration/test_sge_arrays.py tests/integration/test_sge_cluster.py tests/integration/test_sge_operator.py
    tests/deployment/test_sge_arrays_deployment.py
)
mkdir -p out
beside_log=out/pytest-unit-aws-sge.log
.venv/bin/python -m pytest "${BESIDE[@]}" >"$beside_log" 2>&1 &
beside_pid=$!
# Stopped by its PID if this script is interrupted, so no pytest outlives the run.
trap 'kill "$beside_pid" 2>/dev/null || true' EXIT

slurm_log=out/pytest-slurm.log
set +e
.venv/bin/python -m pytest tests "${BESIDE[@]/#/--ignore=}" 2>&1 | tee "$slurm_log"
slurm_status=${PIPESTATUS[0]}
set -e
beside_status=0
wait "$beside_pid" || beside_status=$?
trap - EXIT

echo
echo "=============== unit, AWS and Grid Engine tests (run beside the Slurm tests) ==============="
cat "$beside_log"
echo
echo "Slurm tests: pytest exit $slurm_status; unit, AWS and Grid Engine tests: pytest exit $beside_status"
grep -hE '^(FAILED|ERROR) ' "$slurm_log" "$beside_log" || true
[ "$slurm_status" -eq 0 ] && [ "$beside_status" -eq 0 ]
