"""What is deleted once a task has read its job's outcome, and what is kept.

``delete`` (the default): the payload (a stored one: file or S3 object) and the result document are
deleted as soon as the worker has read the outcome, whatever it was (returned, raised, no result at
all): a retry makes a new payload for its own job, and the traceback is in the task log. Nothing is
deleted before the outcome is read, so a retry that adopts a running job still finds its payload,
and a requeued job can start again.

``keep``: nothing is deleted (to rerun a payload by hand, or to look at a result document).

Values that stayed remote because of their size are *never* deleted here: XCom holds a reference
to them, and a downstream task may read them later. Their lifetime is the user's (an S3 lifecycle
rule on the prefix, a cleanup job on the cluster).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum


class CleanupPolicy(Enum):
    DELETE = "delete"
    KEEP = "keep"

    @classmethod
    def parse(cls, value: str | CleanupPolicy) -> CleanupPolicy:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"cleanup={value!r}: give 'delete' (payload and result deleted once read) or 'keep'"
            ) from None


def locations_to_delete(policy: CleanupPolicy, payload: str | None, result: str | None) -> Sequence[str]:
    """The stored payload (``None`` when it travelled inline) and the result document, unless kept."""
    if policy is CleanupPolicy.KEEP:
        return ()
    return tuple(location for location in (payload, result) if location)
