"""One SSH connection per cluster for everything a worker process does there.

A task talks to its cluster several times from the worker: a Python task asks the job's Python for
its version and then submits, and once the job ended it reads the result and deletes its files; a
failed job's last lines are read for the error. Each of these used to open and close a connection
of its own in its own ``asyncio.run``: a key exchange, a login and a new sshd process on the login
node every time, which cost the login node more than the submission itself.

Here one event loop, in a daemon thread, owns one :class:`SshTransport` per target for the life of
the process (an asyncssh connection belongs to the loop that opened it, so a loop per call could not
keep it). Callers hand it a coroutine function and wait for its result. The transport opens again
after a drop, and its keepalives notice a dead link while it is idle. A forked child starts its own
loop and connections: the parent's belong to the parent.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from airflow_hpc_provider.hooks.ssh import SshTarget, SshTransport

T = TypeVar("T")
_CLOSE_AT_EXIT_S = 5.0


class WorkerLink:
    """The process's loop thread and its connections (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Touched only on the loop's thread.
        self._transports: dict[SshTarget, SshTransport] = {}

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="hpc-ssh-link", daemon=True)
                thread.start()
                self._loop, self._thread, self._pid, self._transports = loop, thread, os.getpid(), {}
            return self._loop

    def run(self, target: SshTarget, work: Callable[[SshTransport], Awaitable[T]]) -> T:
        """``await work(transport)`` on this process's connection to ``target``; its result or error.

        If the caller is interrupted while it waits (Airflow's task timeout raises in the waiting
        thread), the work is cancelled on the loop too.
        """
        loop = self._running_loop()
        if threading.current_thread() is self._thread:
            raise RuntimeError("WorkerLink.run was called from its own loop: await the work instead")

        async def on_loop() -> T:
            transport = self._transports.get(target)
            if transport is None:
                transport = self._transports[target] = SshTransport(target)
            return await work(transport)

        future = asyncio.run_coroutine_threadsafe(on_loop(), loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        """Close every connection and stop the loop (at exit; a later :meth:`run` starts afresh)."""
        with self._lock:
            loop, thread, mine = self._loop, self._thread, self._pid == os.getpid()
            self._loop = self._thread = None
        if loop is None or not mine or thread is None or not thread.is_alive():
            return

        async def close_all() -> None:
            transports, self._transports = list(self._transports.values()), {}
            for transport in transports:
                await transport.close()

        try:
            # At exit: a connection that will not close in time is closed by the kernel.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=_CLOSE_AT_EXIT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CLOSE_AT_EXIT_S)


_link = WorkerLink()
atexit.register(_link.close)


def on_cluster(target: SshTarget, work: Callable[[SshTransport], Awaitable[T]]) -> T:
    """Run remote work over this process's one connection to ``target`` (opened on first use)."""
    return _link.run(target, work)
