"""Helpers shared by the API tests (a module with a unique name: ``conftest`` is ambiguous
when several test folders are collected in one run)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from opendisco import Settings
from opendisco.api import create_app

__all__ = ["TcpProxy", "h", "proxied", "serve"]


@contextlib.asynccontextmanager
async def serve(settings: Settings, discovery: Any = None) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running on this loop, reached through httpx's ASGI transport."""
    app = create_app(settings, discovery)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def proxied(
    settings: Settings, *, mongo: bool = False, **overrides: Any
) -> tuple[TcpProxy, TcpProxy | None, Settings]:
    """Pausable/killable proxies in front of OpenSearch (and MongoDB when ``mongo``), and
    settings that go through them (the shared servers themselves are never touched)."""
    target = urlsplit(settings.opensearch_url)
    os_proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 9200)
    await os_proxy.start()
    update: dict[str, Any] = {"opensearch_url": os_proxy.url, **overrides}
    mongo_proxy = None
    if mongo:
        m = urlsplit(settings.mongo_url.split(",")[0])
        mongo_proxy = TcpProxy(m.hostname or "127.0.0.1", m.port or 27017)
        await mongo_proxy.start()
        update["mongo_url"] = f"mongodb://127.0.0.1:{mongo_proxy.port}/"
    return os_proxy, mongo_proxy, settings.model_copy(update=update)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``pause``/``kill``/``resume`` simulate outages.

    pause: connections stay open (and new ones are accepted by the kernel) but no byte moves,
    like a SIGSTOPped server. strand: the open connections never move a byte again and are
    never closed (their server gone without a reset: a host lost, a partition that dropped
    their state), new ones flow. kill: every connection is closed and nothing listens, like a
    killed server (connection refused). resume: listen again on the same port and forward.
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event
    ) -> None:
        try:
            while True:
                await self._flowing.wait()
                await gate.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                await gate.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

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
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer, gate)),
            asyncio.ensure_future(self._pipe(up_reader, writer, gate)),
        ]
        self._tasks.update(pipes)
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
