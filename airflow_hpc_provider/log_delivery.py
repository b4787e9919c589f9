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
the task log (see ``poller.py``): it waits here after logging, then commits.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import stat
import struct
import termios
import time

log = logging.getLogger(__name__)

# Polling the queue is cheap (one ioctl); a supervisor keeping up empties it within milliseconds.
_CHECK_EVERY_S = 0.01


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

    @classmethod
    def of_this_process(cls) -> LogChannel:
        return cls(_structlog_output_fd())

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
        while True:
            pending = self.pending_bytes()
            if pending == 0:
                return True
            if pending < 0 or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_CHECK_EVERY_S)
