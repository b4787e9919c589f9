"""The package's layers import only downward: a dialect is pure (no SSH, no AWS, no engine)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import airflow_hpc_provider.dialects

DIALECTS = sorted(
    f"airflow_hpc_provider.dialects.{module.name}"
    for module in pkgutil.iter_modules(airflow_hpc_provider.dialects.__path__)
)

# What a dialect may stand on: the other dialects and the value types below them, nothing else of ours.
BELOW_DIALECTS = {
    "airflow_hpc_provider",
    "airflow_hpc_provider.errors",
    "airflow_hpc_provider.jobs",
    "airflow_hpc_provider.resources",
    # Airflow itself reads the provider's metadata when airflow.sdk is imported (errors.py does).
    "airflow_hpc_provider.get_provider_info",
}

# Imported with asyncssh, boto3 and botocore made unimportable; reports which of our modules came in.
PROBE = """
import json, sys
for blocked in ("asyncssh", "boto3", "botocore"):
    sys.modules[blocked] = None  # an import of it now raises ImportError
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(name for name in sys.modules if name.startswith("airflow_hpc_provider"))))
"""


def test_every_dialect_imports_without_asyncssh_boto3_or_botocore_and_pulls_in_no_hook_or_engine() -> None:
    assert len(DIALECTS) >= 8, DIALECTS  # the discovery found the package's dialects
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *DIALECTS], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert set(DIALECTS) <= loaded
    above = sorted(name for name in loaded - BELOW_DIALECTS if not name.startswith("airflow_hpc_provider.dialects"))
    assert above == [], f"a dialect imports a layer above it (hook, engine, trigger or operator): {above}"
