"""A TCP proxy that pauses (like SIGSTOP) or cuts (like kill -9) a server for the clients
that go through it, the shared server itself untouched (a module at the top of ``tests/``:
importable from every suite)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["TcpProxy", "command_on", "store_proxy"]


def command_on(command: str, collection: str) -> Callable[[bytes], bool]:
    """A :attr:`TcpProxy.hold_if` predicate: the chunk carries a MongoDB ``command`` (``update``,
    ``insert``, ``find``...) on ``collection`` (the BSON element ``{command: collection}``)."""
    name = collection.encode() + b"\x00"
    element = b"\x02" + command.encode() + b"\x00" + struct.pack("<i", len(name)) + name
    return lambda data: element in data


async def store_proxy(mongo_url: str) -> TcpProxy:
    """A started proxy in front of the first MongoDB host of ``mongo_url`` (clients given its
    :attr:`TcpProxy.mongo_url` go through it; one per client role, to cut one and not another)."""
    m = urlsplit(mongo_url.split(",")[0])
    proxy = TcpProxy(m.hostname or "127.0.0.1", m.port or 27017)
    await proxy.start()
    return proxy


class _Conn:
    """One proxied connection: whether a request of it was held, and when it was answered."""

    def __init__(self) -> None:
        self.held = False
        self.answered = asyncio.Event()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``pause``/``kill``/``resume`` simulate outages.

    pause: connections stay open (and new ones are accepted by the kernel) but no byte moves,
    like a SIGSTOPped server. strand: the open connections never move a byte again and are
    never closed (their server gone without a reset: a host lost, a partition that dropped
    their state), new ones flow. kill: every connection is closed and nothing listens, like a
    killed server (connection refused). resume: listen again on the same port and forward.
    hold_if: a request chunk it picks is held (its connection moves no byte to the server)
    until :meth:`release`, then sent: a write the server applies after its client timed out and
    closed the connection (``held`` counts them, ``late_answers`` the answers they got).
    cut_if: a request chunk it picks is never sent, and its connection is closed (``cut``
    counts them): the server unreachable for that request alone, a held one untouched.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._gates: set[asyncio.Event] = set()  # one per open connection (strand)
        self.hold_if: Callable[[bytes], bool] | None = None
        self.held = 0
        self.cut_if: Callable[[bytes], bool] | None = None
        self.cut = 0
        self.late_answers = 0
        self._released = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mongo_url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _read(self, reader: asyncio.StreamReader, gate: asyncio.Event) -> bytes:
        """The next bytes of ``reader`` once the proxy and its connection flow."""
        await self._flowing.wait()
        await gate.wait()
        return await reader.read(65536)

    async def _write(self, writer: asyncio.StreamWriter, gate: asyncio.Event, data: bytes) -> None:
        await self._flowing.wait()
        await gate.wait()
        writer.write(data)
        await writer.drain()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        gate: asyncio.Event,
        conn: _Conn,
    ) -> None:
        """A connection's requests to the server: a chunk ``hold_if`` picks waits for
        :meth:`release`, and once the client has closed, the server side stays open until the
        held request is answered."""
        try:
            while data := await self._read(reader, gate):
                if self.cut_if is not None and self.cut_if(data):
                    self.cut += 1
                    break
                if self.hold_if is not None and self.hold_if(data):
                    self.held += 1
                    conn.held = True
                    await self._released.wait()
                await self._write(writer, gate, data)
            if conn.held:  # the client gave up, not the server
                await asyncio.wait_for(conn.answered.wait(), 30.0)
        except (ConnectionError, asyncio.CancelledError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _answers(self, conn: _Conn, gate: asyncio.Event, *streams: Any) -> None:
        """The server's answers (``streams``: its reader, the client's writer) to a
        connection's client (a held request's counted late)."""
        reader, writer = streams
        try:
            while data := await self._read(reader, gate):
                if conn.held and not conn.answered.is_set():
                    self.late_answers += 1
                    conn.answered.set()
                with contextlib.suppress(ConnectionError):  # the client may be gone
                    await self._write(writer, gate, data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            conn.answered.set()
            writer.close()

    def release(self) -> None:
        """Send the requests ``hold_if`` held (and hold no more)."""
        self.hold_if = None
        self._released.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._tasks.add(me)  # type: ignore[arg-type]
        self._writers.add(writer)
        try:
            await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (ConnectionError, asyncio.CancelledError):
            writer.close()
            return
        self._writers.add(up_writer)
        gate = asyncio.Event()
        gate.set()
        self._gates.add(gate)
        conn = _Conn()
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer, gate, conn)),
            asyncio.ensure_future(self._answers(conn, gate, up_reader, writer)),
        ]
        self._tasks.update(pipes)
        # kill() cancels this handler: it ends normally then, or Python 3.11's stream server
        # logs the cancellation as an error for every connection a cut drops
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pipes, return_exceptions=True)
        self._tasks.difference_update(pipes)
        self._writers.discard(writer)
        self._writers.discard(up_writer)

    def pause(self) -> None:
        self._flowing.clear()

    def strand(self) -> None:
        for gate in self._gates:
            gate.clear()
        self._gates.clear()

    async def kill(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        me = asyncio.current_task()
        for t in list(self._tasks):
            if t is not me:
                t.cancel()
        self._tasks.clear()
        self._writers.clear()
        self._flowing.set()

    async def resume(self) -> None:
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.kill()
