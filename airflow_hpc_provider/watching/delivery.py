"""When a line handed to the task log is known to be written there.

In Airflow 3 a trigger's log lines (and a task's, on the worker) leave the process as JSON messages
on a socket to a supervisor process, which writes and flushes each message to the task log file as
it reads it. A line handed to the logger is therefore in the task log once the supervisor has read
it, that is once the socket's send queue is empty (Linux ``SIOCOUTQ``: for a Unix stream socket,
the bytes the peer has not read yet). Until then it can still be lost with the process: a triggerer
killed with SIGKILL takes unread messages with it.

Where logs go anywhere else (a file, the console of ``airflow dags test``), a logging call has
written its line by the time it returns, and :func:`wait_until_written` returns at once.

This is what lets a reader of job output move its saved cursor only past lines that are durably in
the task log (see ``cluster.py``): it waits here after logging, then commits.

The socket also bounds how much may be in flight: each message costs at least 768 bytes of the
socket's send buffer (its bookkeeping, whatever the line's length), so some 270 lines fill the
default 208 KiB, and the next logging call would block the whole event loop until the supervisor
reads. And the supervisor reads slowly: Airflow 3.3's triggerer supervisor takes at most 4 KiB of
log messages (about ten) per turn of its loop, and every turn also queries the database. So
:func:`log_lines` logs in short slices and, before each, waits without blocking while the socket
is more than a quarter full (every trigger of the process writes to the same socket).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import stat
import struct
import termios
import time
import weakref
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

# Polling the queue is cheap (one ioctl); a supervisor keeping up empties it within milliseconds,
# so the first checks come quickly (the sooner a write is known, the sooner it is committed).
_CHECKS_S = (0.001, 0.002, 0.005)
_CHECK_EVERY_S = 0.01
# Lines logged between two looks at the clock and the socket, and the most time one slice of
# logging may hold the event loop before it yields.
_LINES_PER_LOOK = 16
SLICE_S = 0.01
# How long to wait for a stalled supervisor before writing anyway (the write may then block).
_STALL_LIMIT_S = 30.0
# How long one wait for "written" lasts before it is tried again (see confirm_written).
_WRITTEN_WAIT_S = 5.0


_announced = False


def _structlog_output_fd() -> int | None:
    """The file descriptor the process's structured logs are written to, if it is a socket."""
    try:
        import structlog

        factory = structlog.get_config().get("logger_factory")
        output = getattr(factory, "io", None)
        if output is None:
            return None
        fd = int(output.fileno())
        return fd if stat.S_ISSOCK(os.fstat(fd).st_mode) else None
    except Exception:  # not configured by Airflow, closed, or a shape we do not know: no socket
        return None


def unread_bytes(fd: int) -> int:
    """Bytes written to socket ``fd`` that its reader has not taken yet (0 when all were read)."""
    answer = fcntl.ioctl(fd, termios.TIOCOUTQ, struct.pack("i", 0))  # TIOCOUTQ == SIOCOUTQ on Linux
    return int(struct.unpack("i", answer)[0])


class LogChannel:
    """The way this process's log lines reach the task log, found once per process."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.high_water = 0
        if fd is not None:
            try:
                sndbuf = socket.socket(fileno=os.dup(fd))
                with sndbuf:
                    self.high_water = sndbuf.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 4
            except OSError:
                self.high_water = 32 * 1024

    @classmethod
    def of_this_process(cls) -> LogChannel:
        global _announced
        channel = cls(_structlog_output_fd())
        if channel.via_supervisor and not _announced:
            # Once per process, in the process's own log (a triggerer's, not a task's): proof that
            # delivery is confirmed through the supervisor here.
            _announced = True
            log.info("job output lines count as delivered once the supervisor read them (log socket fd %s)", channel.fd)
        return channel

    @property
    def via_supervisor(self) -> bool:
        return self.fd is not None

    def pending_bytes(self) -> int:
        if self.fd is None:
            return 0
        try:
            return unread_bytes(self.fd)
        except OSError:  # the socket is gone: the supervisor died, nothing more will be written
            return -1

    async def wait_until_written(self, timeout_s: float) -> bool:
        """True once everything logged so far has been read by the supervisor (and so written);
        False when that did not happen within ``timeout_s`` or the channel broke."""
        deadline = time.monotonic() + timeout_s
        checks = 0
        while True:
            pending = self.pending_bytes()
            if pending == 0:
                return True
            if pending < 0 or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_CHECKS_S[checks] if checks < len(_CHECKS_S) else _CHECK_EVERY_S)
            checks += 1

    def crowded(self) -> bool:
        return self.fd is not None and self.pending_bytes() > self.high_water

    async def room(self) -> None:
        """Yield to the event loop; while the socket is more than a quarter full, wait (without
        blocking the loop) for the supervisor to read, up to a limit."""
        await asyncio.sleep(0)
        if self.fd is None:
            return
        deadline = time.monotonic() + _STALL_LIMIT_S
        while self.pending_bytes() > self.high_water and time.monotonic() < deadline:
            await asyncio.sleep(_CHECK_EVERY_S)


# One turn at a time per event loop: every watcher of the process logs its slices in turn. A slice
# that merely yielded (``sleep(0)``) would run again in the same turn of the loop as every other
# watcher's slice, so ten watchers would hold the loop ten slices long.
_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _turn() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    turn = _turns.get(loop)
    if turn is None:
        turn = _turns[loop] = asyncio.Lock()
    return turn


async def log_lines(log: logging.Logger | Any, lines: Sequence[str], channel: LogChannel) -> None:
    """Log each line at INFO, from the caller's own task (Airflow routes a line to the task log by
    the task's context), in slices: at most ``SLICE_S`` per turn of the event loop for all the
    process's watchers together, and never into an overfull supervisor socket (where a write would
    block the loop)."""
    turn = _turn()
    index = 0
    while index < len(lines):
        if index:
            await asyncio.sleep(0)  # between slices only: a chunk that fits one slice is logged at once
        async with turn:  # fair: a watcher waiting for its turn gets it before this one's next slice
            if channel.crowded():
                await channel.room()
            started = time.perf_counter()
            while index < len(lines):
                log.info("%s", lines[index])
                index += 1
                if index % _LINES_PER_LOOK == 0 and (time.perf_counter() - started >= SLICE_S or channel.crowded()):
                    break


async def confirm_written(channel: LogChannel) -> bool:
    """Wait until everything logged so far is written to the task log. False only when the channel
    broke (the supervisor is gone): then nothing may count as delivered. A slow supervisor is
    waited for, however long: the lines stay unconfirmed (and uncommitted) meanwhile."""
    while True:
        if await channel.wait_until_written(_WRITTEN_WAIT_S):
            return True
        if channel.pending_bytes() < 0:
            return False
