"""A line counts as written to the task log only once the supervisor has read it off the socket."""

from __future__ import annotations

import asyncio
import os
import socket

from airflow_hpc_provider.log_delivery import LogChannel, unread_bytes


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
