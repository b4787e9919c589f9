"""Turn what DAG authors write (``"4G"``, ``"1-12:00:00"``, ``timedelta(hours=2)``) into checked values.

Every function raises :class:`JobSpecError` naming the argument and the value, so a mistake shows up
when the DAG is parsed, not hours later in the triggerer.
"""

from __future__ import annotations

import re
from datetime import timedelta

from airflow_hpc_provider.errors import JobSpecError
from airflow_hpc_provider.jobs import Resources

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_MEMORY_FACTOR_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}

# Slurm's accepted time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME_DAYS = re.compile(r"^(\d+)-(\d+)(?::(\d+))?(?::(\d+))?$")
_TIME_CLOCK = re.compile(r"^(\d+)(?::(\d+))?(?::(\d+))?$")

# Partition, account, queue names: what schedulers accept, and nothing a directive line could abuse.
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_NAME_LIST = re.compile(r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$")
_GRES = re.compile(r"^[A-Za-z0-9_.:,()=+-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_memory_mb(value: int | str | None, *, argument: str = "memory") -> int | None:
    """``4096`` (MiB), ``"4G"``, ``"512M"``, ``"2GB"`` -> MiB; anything else is an error."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise JobSpecError(f"{argument}={value!r}: give MiB as an int or a size such as '4G'")
    if isinstance(value, int):
        megabytes = float(value)
    else:
        match = _MEMORY.match(str(value))
        if not match:
            raise JobSpecError(
                f"{argument}={value!r} is not a memory size: use MiB as an int, or a number with "
                "K, M, G or T (for example '512M', '4G')"
            )
        megabytes = float(match.group(1)) * _MEMORY_FACTOR_MB[match.group(2).upper()]
    if megabytes <= 0:
        raise JobSpecError(f"{argument}={value!r} must be more than zero")
    return max(1, round(megabytes))


def parse_time_limit(value: timedelta | str | int | None, *, argument: str = "time_limit") -> timedelta | None:
    """A timedelta, minutes as an int, or a Slurm time string -> a positive timedelta."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise JobSpecError(f"{argument}={value!r}: give a timedelta or a string such as '1-12:00:00'")
    if isinstance(value, timedelta):
        limit = value
    elif isinstance(value, int):
        limit = timedelta(minutes=value)
    else:
        limit = _parse_slurm_time(value.strip(), argument)
    if limit <= timedelta(0):
        raise JobSpecError(f"{argument}={value!r} must be a positive duration")
    return limit


def _parse_slurm_time(text: str, argument: str) -> timedelta:
    days = _TIME_DAYS.match(text)
    if days:
        d, h, m, s = (int(part) if part else 0 for part in days.groups())
        return timedelta(days=d, hours=h, minutes=m, seconds=s)
    clock = _TIME_CLOCK.match(text)
    if clock:
        parts = [int(part) for part in clock.groups() if part is not None]
        if len(parts) == 1:
            return timedelta(minutes=parts[0])
        if len(parts) == 2:
            return timedelta(minutes=parts[0], seconds=parts[1])
        return timedelta(hours=parts[0], minutes=parts[1], seconds=parts[2])
    raise JobSpecError(
        f"{argument}={text!r} is not a time limit: use a timedelta, minutes as an int, or one of "
        "'MM', 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS'"
    )


def check_positive(value: int | None, argument: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise JobSpecError(f"{argument}={value!r} must be a whole number of at least 1")
    return value


def check_name(value: str | None, argument: str, *, allow_list: bool = False) -> str | None:
    if value is None:
        return None
    pattern = _NAME_LIST if allow_list else _NAME
    if not isinstance(value, str) or not pattern.fullmatch(value):
        what = "a name or comma-separated names" if allow_list else "a name"
        raise JobSpecError(
            f"{argument}={value!r} is not {what} a scheduler accepts (letters, digits, '_', '.', '+', '-')"
        )
    return value


def check_env_names(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise JobSpecError(f"env name {name!r} is not a valid environment variable name")
    return tuple(names)


def check_single_line(value: str, argument: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise JobSpecError(f"{argument}={value!r} must be a single line")
    return value


def build_resources(
    *,
    partition: str | None = None,
    account: str | None = None,
    nodes: int | None = None,
    cpus: int | None = None,
    memory: int | str | None = None,
    time_limit: timedelta | str | int | None = None,
    gpus: int | None = None,
    gres: str | None = None,
) -> Resources:
    if gres is not None and (not isinstance(gres, str) or not _GRES.fullmatch(gres)):
        raise JobSpecError(f"gres={gres!r} is not a generic resource request such as 'gpu:a100:2'")
    return Resources(
        partition=check_name(partition, "partition", allow_list=True),
        account=check_name(account, "account"),
        nodes=check_positive(nodes, "nodes"),
        cpus=check_positive(cpus, "cpus"),
        memory_mb=parse_memory_mb(memory),
        time_limit=parse_time_limit(time_limit),
        gpus=check_positive(gpus, "gpus"),
        gres=gres,
    )
