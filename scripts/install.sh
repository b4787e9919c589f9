#!/bin/bash
# scripts/install.sh -- the project's Python environment in .venv: Airflow 3.3, this package (editable)
# with every extra the tests, docs and benchmarks use (aws: the amazon provider and boto3; test;
# docs; bench: the SSH provider the peer benchmark measures). Safe to run again; fast when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# uv resolves Airflow's large dependency tree in seconds where pip takes minutes.
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip >/dev/null
  .venv/bin/python -m pip install -q uv
fi
VIRTUAL_ENV=$PWD/.venv .venv/bin/uv pip install -q -e ".[aws,test,docs,bench]"
