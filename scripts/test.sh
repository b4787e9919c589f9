#!/bin/bash
# scripts/test.sh -- the whole test suite, from a fresh Debian machine (as root): bring up the local
# Slurm cluster, install (Python env, headless Chromium), check lint and types, build the docs, then
# run every test (unit, integration and deployment, the slow ones included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/cluster/up.sh
bash scripts/install.sh
bash scripts/browser.sh   # headless Chromium for tests/deployment/ (the Add Connection form)
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/sphinx-build -q -W --keep-going -b html docs out/docs-html
.venv/bin/python -m pytest "$@"
