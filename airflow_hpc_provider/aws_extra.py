"""Say which extra to install when an AWS part of this provider is imported without it.

Every module that needs boto3 or the amazon provider imports this one first, so a Slurm/PBS-only
installation (``pip install airflow-hpc-provider``) that imports, say, ``operators.batch`` gets the
install command instead of ``No module named 'botocore'``.
"""

from __future__ import annotations

import importlib.util

AWS_EXTRA = "airflow-hpc-provider[aws]"
_NEEDED = ("boto3", "botocore", "airflow.providers.amazon")

missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
if missing:
    raise ImportError(
        f"The AWS parts of airflow-hpc-provider (AWS Batch, EC2) need the 'aws' extra, which is not "
        f"installed here ({', '.join(missing)} missing): pip install '{AWS_EXTRA}'"
    )
