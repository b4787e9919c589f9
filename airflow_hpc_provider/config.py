"""The provider's own section of ``airflow.cfg``: ``[hpc]`` (declared in ``get_provider_info()["config"]``).

Deployment-wide defaults that a connection or a task may still override, in this order: the task's
argument, then the connection's extra, then ``[hpc]``, then the built-in value. Read when a task
runs (and, for ``deferrable``, when the operator is built), so ``AIRFLOW__HPC__...`` environment
variables work as for any other Airflow option.
"""

from __future__ import annotations

import os

from airflow.sdk import conf

from airflow_hpc_provider.errors import ConnectionConfigError

SECTION = "hpc"
BUILTIN_POLL_INTERVAL_S = 10.0
BUILTIN_LOG_DIR = ".airflow-hpc/logs"
BUILTIN_ARRAY_WINDOW_S = 10.0
# Airflow's global switch. Airflow writes its own default (false) into every airflow.cfg it
# creates, so only an environment variable tells that a deployment chose it on purpose.
AIRFLOW_DEFERRABLE_ENV = "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"


def default_poll_interval_s() -> float:
    """``[hpc] default_poll_interval``: seconds between status polls when neither task nor connection says."""
    return _seconds("default_poll_interval", BUILTIN_POLL_INTERVAL_S)


def default_array_window_s() -> float:
    """``[hpc] array_window``: the longest a mapped task instance waits in the triggerer for its
    siblings before it is submitted in a Slurm array (it ends early once all of them are there)."""
    return _seconds("array_window", BUILTIN_ARRAY_WINDOW_S)


def _seconds(option: str, builtin: float) -> float:
    """A positive number of seconds from ``[hpc]``; anything else is refused, naming the option."""
    text = conf.get(SECTION, option, fallback=None)
    if text is None or not str(text).strip():
        return builtin
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ConnectionConfigError(f"[{SECTION}] {option}={text!r} in the Airflow configuration: give seconds > 0")
    return seconds


def default_log_dir() -> str:
    """``[hpc] remote_log_dir``: where job output goes on a cluster whose connection names no ``log_dir``."""
    text = conf.get(SECTION, "remote_log_dir", fallback=None)
    if text is None or not str(text).strip():
        return BUILTIN_LOG_DIR
    return str(text).strip()


def default_deferrable() -> bool:
    """Wait in the triggerer unless the deployment turned deferral off.

    Off means ``[hpc] default_deferrable = False``, or Airflow's ``[operators] default_deferrable``
    set through its environment variable ``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE`` (its value in
    ``airflow.cfg`` is Airflow's own generated default, ``false``, in nearly every deployment, and
    would otherwise make every job hold a worker slot for as long as it queues and runs).
    """
    if os.environ.get(AIRFLOW_DEFERRABLE_ENV, "").strip():
        return conf.getboolean("operators", "default_deferrable")
    return conf.getboolean(SECTION, "default_deferrable", fallback=True)
