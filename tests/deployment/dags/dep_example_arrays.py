"""The arrays example DAG (example_dags/slurm_array_map.py) as users run it: a DAG file of this
folder that runs the example's own file, so the deployment tests exercise exactly what it ships."""

from __future__ import annotations

import runpy
from pathlib import Path

from airflow.sdk import DAG

_example = runpy.run_path(str(Path(__file__).resolve().parents[3] / "example_dags" / "slurm_array_map.py"))
dag: DAG = _example["dag"]
