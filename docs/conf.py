"""Sphinx configuration for the airflow-hpc-provider documentation (no network).

The API reference (api.rst) is generated from the docstrings with autodoc, so the package and
its extras (``pip install -e '.[aws,docs]'``) must be importable where the docs are built.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airflow_hpc_provider import __version__

project = "airflow-hpc-provider"
author = "airflow-hpc-provider contributors"
copyright = "the airflow-hpc-provider contributors"
release = version = __version__

extensions: list[str] = ["sphinx.ext.autodoc"]
root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
highlight_language = "none"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}

html_theme = "alabaster"
html_title = f"{project} {release}"
html_theme_options = {
    "description": "Slurm, PBS and AWS jobs from Apache Airflow, watched without holding worker slots",
    "fixed_sidebar": True,
}
