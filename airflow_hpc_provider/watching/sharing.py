"""One poller per (event loop, key) in a process, shared by every watcher and closed by the last.

A triggerer runs every trigger on one event loop; the pollers (SSH clusters, AWS Batch) hold a
connection and a loop task of that loop, so they are shared per loop and reference-counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Hashable, ItemsView, ValuesView
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Interval(Protocol):
    @property
    def interval_s(self) -> float: ...


class SharedPoller(Protocol):
    settings: Interval

    async def close(self) -> None: ...


P = TypeVar("P", bound=SharedPoller)


@dataclass
class Entry(Generic[P]):
    poller: P
    users: int


class SharedPollers(Generic[P]):
    """The pollers of one kind in this process."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, Hashable], Entry[P]] = {}

    def items(self) -> ItemsView[tuple[int, Hashable], Entry[P]]:
        return self._entries.items()

    def values(self) -> ValuesView[Entry[P]]:
        return self._entries.values()

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def use(self, key: Hashable, create: Callable[[], P], settings: Interval) -> AsyncIterator[P]:
        """This loop's poller for ``key``, created on first use, closed when its last user leaves.

        The first user's settings win; a later user with a shorter interval makes it poll faster.
        """
        full_key = (id(asyncio.get_running_loop()), key)
        entry = self._entries.get(full_key)
        if entry is None:
            entry = self._entries[full_key] = Entry(create(), 0)
        elif settings.interval_s < entry.poller.settings.interval_s:
            entry.poller.settings = settings
        entry.users += 1
        try:
            yield entry.poller
        finally:
            entry.users -= 1
            if entry.users == 0 and self._entries.get(full_key) is entry:
                del self._entries[full_key]
                await entry.poller.close()
