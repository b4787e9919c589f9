"""What every resource of the AWS set-up can do: be found by its name, made, brought in line, removed.

:mod:`airflow_hpc_provider.setup.plan` drives a list of them; each kind (a bucket, a role, a stack...)
is a small subclass that knows its own AWS calls. Ownership is decided in one place, :meth:`Found.ours`,
from the ``airflow-hpc:setup`` tag that :meth:`Resource.create` puts on everything it makes.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from botocore.exceptions import BotoCoreError, ClientError

from airflow_hpc_provider.errors import SetupError
from airflow_hpc_provider.setup.naming import TAG_KEY


@dataclass(frozen=True)
class Found:
    """A resource that exists under the expected name: whose it is (its set-up tag) and what to show."""

    owner: str | None  # the value of its airflow-hpc:setup tag; None when it has none
    detail: str = ""  # an ARN, an id, a state: what `show` prints beside the name

    def ours(self, setup_name: str) -> bool:
        return self.owner == setup_name


class Resource(abc.ABC):
    """One AWS resource of a set-up, known by its derived name."""

    kind: ClassVar[str]

    def __init__(self, name: str, setup_name: str) -> None:
        self.name = name
        self.setup_name = setup_name

    @property
    def tags(self) -> dict[str, str]:
        return {TAG_KEY: self.setup_name}

    @abc.abstractmethod
    def find(self) -> Found | None:
        """The resource as it is now, or None when there is none of this name."""

    @abc.abstractmethod
    def create(self) -> str:
        """Make it (tagged as ours), wait until it is usable; returns what `show` would print."""

    def converge(self, found: Found) -> list[str]:
        """Bring an existing resource of ours in line with what was asked; the changes made ([] = none)."""
        return []

    def deletion_blockers(self, found: Found) -> list[str]:
        """Why deleting it now would touch something that is not ours ([] = nothing): checked before any delete."""
        return []

    @abc.abstractmethod
    def delete(self, found: Found) -> list[str]:
        """Remove it and wait until it is gone; notes on what that involved (detached, emptied...)."""


def tag_list(tags: Mapping[str, str], key: str = "Key", value: str = "Value") -> list[dict[str, str]]:
    return [{key: k, value: v} for k, v in tags.items()]


def tag_value(tags: list[dict[str, str]] | None, key: str = "Key", value: str = "Value") -> str | None:
    for tag in tags or []:
        if tag.get(key) == TAG_KEY:
            return tag.get(value)
    return None


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def aws_step(what: str) -> Iterator[None]:
    """AWS refusing a step becomes a ``SetupError`` naming the step and quoting AWS's own words."""
    try:
        yield
    except ClientError as error:
        message = error.response.get("Error", {}).get("Message", "") or str(error)
        raise SetupError(f"{what}: AWS refused ({error_code(error)}): {message}") from error
    except BotoCoreError as error:
        raise SetupError(f"{what}: {error}") from error


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, *, interval_s: float = 2.0) -> Any:
    """Call ``check`` until it returns something true, at growing intervals (capped at 15 s).

    AWS makes compute environments, queues and stacks asynchronously; moto at once, so there the
    first call returns and nothing sleeps.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise SetupError(f"{what}: still not done after {timeout_s:.0f} s; run the command again to resume")
        time.sleep(interval_s)
        interval_s = min(interval_s * 1.5, 15.0)
