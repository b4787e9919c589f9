"""When a source asks again: one answer for every source of the engine.

* after a failed poll, exponential backoff with jitter, so a cluster or an AWS API coming back is
  not hit by every triggerer at once (the jobs themselves are untouched and watched again after);
* a poll woken by newcomers comes no sooner than ``MIN_POLL_SPACING_S`` after the last one,
  however fast they arrive;
* a newly watched job is asked about again ``FIRST_EARLY_POLL_S`` after its watch began, doubling
  up to the interval: a short job ends seconds after it does, not a whole interval later. Polls are
  shared, so a burst of newcomers costs a few extra polls in all, and jobs watched longer than the
  interval cost one poll per interval.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

MIN_POLL_SPACING_S = 1.0
FIRST_EARLY_POLL_S = 1.0


def backoff(failures: int, interval_s: float, max_backoff_s: float) -> float:
    """How long to wait after the ``failures``-th failed poll in a row: the interval, doubled per
    failure up to ``max_backoff_s``, times a jitter of +-20 %."""
    delay = min(max_backoff_s, interval_s * 2.0 ** (failures - 1))
    return float(delay * random.uniform(0.8, 1.2))


def next_status_due(now: float, interval_s: float, watched_since: Iterable[float]) -> float:
    """An interval from ``now``, or sooner: the next early poll of a job watched for less than that
    (``watched_since``: when each job still running was first watched)."""
    due = now + interval_s
    for since in watched_since:
        step = FIRST_EARLY_POLL_S
        while step < interval_s and since + step <= now:
            step *= 2
        if step < interval_s:
            due = min(due, since + step)
    return due
