"""The package's layers import only downward: a dialect is pure (no SSH, no AWS, no engine)."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import airflow_hpc_provider
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


def _imports_of_our_modules() -> dict[str, set[str]]:
    """Every module of the package and the modules of ours it imports anywhere in its text: at the
    top, inside functions (a deferred import still runs) and under ``TYPE_CHECKING``."""
    root = Path(airflow_hpc_provider.__file__).parent
    paths = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from package import module` names a module; `from module import name` the module.
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    found.add(submodule if submodule in paths else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {module for module in found if module in paths and module != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other through their imports (strongly connected)."""
    order: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = lowest[module] = len(order)
        stack.append(module)
        for imported in sorted(graph[module]):
            if imported not in order:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in stack:
                lowest[module] = min(lowest[module], order[imported])
        if lowest[module] == order[module]:
            group = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return circles


def test_no_module_of_the_package_imports_itself_back_through_others() -> None:
    graph = _imports_of_our_modules()
    assert len(graph) > 100 and "airflow_hpc_provider.hooks.ssh" in graph["airflow_hpc_provider.hooks.slurm"]
    assert _circles(graph) == [], "modules that import each other: move what they share below them"


# A module is one job a reader takes in at once; past this it is time to split it by job.
MOST_LINES = 450


def test_no_module_of_the_package_is_longer_than_a_reader_takes_in_at_once() -> None:
    package = Path(airflow_hpc_provider.__file__).parent
    lengths = {str(path.relative_to(package)): len(path.read_text().splitlines()) for path in package.rglob("*.py")}
    assert len(lengths) > 100
    assert {name: count for name, count in lengths.items() if count > MOST_LINES} == {}
