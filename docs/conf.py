"""Sphinx configuration for the airflow-hpc-provider documentation (no network, no extensions)."""

from __future__ import annotations

import tomllib
from pathlib import Path

_pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())

project = "airflow-hpc-provider"
author = "airflow-hpc-provider contributors"
copyright = "the airflow-hpc-provider contributors"
release = version = _pyproject["project"]["version"]

extensions: list[str] = []
root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
highlight_language = "none"

html_theme = "alabaster"
html_title = f"{project} {release}"
html_theme_options = {
    "description": "Slurm jobs from Apache Airflow, watched without holding worker slots",
    "fixed_sidebar": True,
}
