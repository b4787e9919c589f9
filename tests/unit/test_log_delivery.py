"""A line counts as written to the task log only once the supervisor has read it off the socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from airflow_hpc_provider.watching.delivery import LogChannel, log_lines, unread_bytes


def test_a_socket_reports_unread_bytes_until_its_reader_takes_all_of_them() -> None:
    writer, reader = socket.socketpair()
    with writer, reader:
        assert unread_bytes(writer.fileno()) == 0
        writer.sendall(b"line\n" * 200)
        assert unread_bytes(writer.fileno()) > 0
        reader.recv(10)  # a partial read still leaves the rest queued
        assert unread_bytes(writer.fileno()) > 0
        while unread_bytes(writer.fileno()):
            reader.recv(65536)
        assert unread_bytes(writer.fileno()) == 0


async def test_waiting_ends_when_the_supervisor_reads_and_times_out_when_it_does_not() -> None:
    writer, reader = socket.socketpair()
    with writer, reader:
        channel = LogChannel(writer.fileno())
        writer.sendall(b'{"event": "a line"}\n')
        assert not await channel.wait_until_written(timeout_s=0.05)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, reader.recv, 65536)
        assert await channel.wait_until_written(timeout_s=2.0)


async def test_a_broken_channel_is_never_taken_for_written() -> None:
    writer, reader = socket.socketpair()
    fd = os.dup(writer.fileno())
    writer.close()
    reader.close()
    os.close(fd)
    assert not await LogChannel(fd).wait_until_written(timeout_s=0.05)


async def test_without_a_supervisor_socket_a_logged_line_is_already_written() -> None:
    assert await LogChannel(None).wait_until_written(timeout_s=0.0)


class SocketHandler(logging.Handler):
    """Writes each message to a socket, blocking when it is full, as Airflow's JSON log channel does."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def emit(self, record: logging.LogRecord) -> None:
        self.sock.sendall(record.getMessage().encode() + b"\n")


async def test_logging_thousands_of_lines_never_blocks_the_loop_on_a_full_socket() -> None:
    """The only reader runs on the same event loop: a blocking write would never return."""
    writer, reader = socket.socketpair()
    reader.setblocking(False)
    # Where a blocking write would wait for room (and block the loop), this one fails: its line is lost.
    writer.setblocking(False)
    logger = logging.getLogger(f"test.delivery.{id(writer)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(SocketHandler(writer))
    received = bytearray()

    async def supervisor() -> None:  # reads a little at a time, only when the loop lets it
        while True:
            await asyncio.sleep(0.001)
            with contextlib.suppress(BlockingIOError):
                received.extend(reader.recv(4096))

    reading = asyncio.create_task(supervisor())
    lines = [f"line {i} " + "x" * 60 for i in range(5000)]
    try:
        channel = LogChannel(writer.fileno())
        await asyncio.wait_for(log_lines(logger, lines, channel), 60)
        assert await channel.wait_until_written(timeout_s=30)
    finally:
        reading.cancel()
        writer.close()
        reader.close()
    assert received.decode().splitlines() == lines
