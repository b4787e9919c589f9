"""Every module of the package, imported: what tests that must cover "every X the package defines" walk."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import airflow_hpc_provider


def every_module() -> list[ModuleType]:
    # A file walk, not pkgutil: triggers/ and operators/ are namespace packages pkgutil does not enter.
    root = Path(airflow_hpc_provider.__file__).parent
    modules = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append(importlib.import_module(".".join(("airflow_hpc_provider", *parts))))
    return modules


def defined_classes(base: type) -> list[type]:
    """The subclasses of ``base`` defined in the package, found in every module (not only those imported)."""
    every_module()
    found: set[type] = set()
    pending = [base]
    while pending:
        for subclass in pending.pop().__subclasses__():
            pending.append(subclass)
            if subclass.__module__.startswith("airflow_hpc_provider"):
                found.add(subclass)
    return sorted(found, key=lambda cls: (cls.__module__, cls.__qualname__))
