"""A TCP proxy on 127.0.0.1 that plays a sick network between SSH clients and the test sshd.

It forwards byte for byte until told otherwise:

* :meth:`reset`: every open connection gets a TCP reset (both sides), as when a router restarts;
* :meth:`refuse`: the port is closed: new connections are refused (and :meth:`reset` first, as a
  login node that went down would do);
* :meth:`blackhole`: nothing moves any more and nothing is answered, without an error: open
  connections stop being read or written (bytes wait in the kernel, as TCP retransmits a dropped
  packet), new connections are accepted but get no banner;
* :meth:`restore`: back to forwarding; what waited flows again.

The proxy runs its own event loop in a thread, so a test (or a benchmark) drives it from any
thread or loop. Stopped with :meth:`stop`; it owns no process.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()  # created unbound; used only on the proxy's loop
        self.connections_accepted = 0

    # -- driving it from the outside ---------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def reset(self) -> None:
        self._call(self._reset())

    def refuse(self) -> None:
        self._call(self._refuse())

    def blackhole(self) -> None:
        self._call(self._blackhole())

    def restore(self) -> None:
        self._call(self._restore())

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=30)

    # -- on the proxy's loop -----------------------------------------------------------------------

    async def _start(self) -> None:
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accepted, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        await self._refuse()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _reset(self) -> None:
        for link in list(self._links):
            for writer in (link.client, link.upstream):
                if writer is not None:
                    # Linger 0: closing sends RST instead of FIN, as a vanished peer's router would.
                    with contextlib.suppress(OSError):
                        linger = struct.pack("ii", 1, 0)
                        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    writer.transport.abort()
            for task in link.tasks:
                task.cancel()
        self._links.clear()

    async def _refuse(self) -> None:
        await self._reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _blackhole(self) -> None:
        self._flowing.clear()

    async def _restore(self) -> None:
        self._flowing.set()
        await self._listen()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        link = _Link(client=writer)
        self._links.add(link)
        try:
            await self._flowing.wait()  # a blackholed node answers nothing, not even a banner
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            link.upstream = up_writer
            link.tasks = [
                asyncio.ensure_future(self._pump(reader, up_writer)),
                asyncio.ensure_future(self._pump(up_reader, writer)),
            ]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._links.discard(link)
            writer.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await source.read(65536)
                if not data:
                    break
                await self._flowing.wait()  # read during a blackhole: held back, not lost
                sink.write(data)
                await sink.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            sink.transport.abort()
