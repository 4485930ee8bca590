"""Helpers shared by the ingest tests (a module with a unique name: ``conftest`` is ambiguous
when several test folders are collected in one run)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from opendisco import Settings

__all__ = ["OPENDISCO", "FaultyHttpProxy", "HeldBulkProxy", "worker_env"]

OPENDISCO = Path(sys.executable).with_name("opendisco")


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an ``opendisco`` subprocess working in ``settings``' namespace."""
    env = dict(os.environ)
    env.update(
        OPENDISCO_OPENSEARCH_URL=settings.opensearch_url,
        OPENDISCO_MONGO_URL=settings.mongo_url,
        OPENDISCO_MONGO_DB=settings.mongo_db,
        OPENDISCO_ITEMS_COLLECTION=settings.items_collection,
        OPENDISCO_INDEX_ALIAS=settings.index_alias,
        OPENDISCO_SYNC_POLL_INTERVAL="0.1",
        OPENDISCO_SYNC_BATCH_SIZE="15",
        OPENDISCO_SYNC_OVERLAP_SECONDS="2",
        OPENDISCO_SYNC_LEASE_SECONDS="3",  # a killed worker's partitions free up quickly
    )
    env.update(extra)
    return env


class FaultyHttpProxy:
    """An HTTP reverse proxy to ``target`` on its own thread; while ``failing`` it answers
    every request itself, alternating 429 and 503 (an overloaded or restarting OpenSearch)."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.failing = False
        self.port = 0
        self.answered: dict[int, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.failing:
            n = sum(self.answered.values())
            status = 429 if n % 2 else 503
            self.answered[status] = self.answered.get(status, 0) + 1
            reason = "es_rejected_execution_exception" if status == 429 else "unavailable"
            return web.json_response({"error": {"type": reason}, "status": status}, status=status)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        async with self._session.request(
            request.method, self.target + request.path_qs, data=body, headers=headers
        ) as resp:
            data = await resp.read()
            self.answered[resp.status] = self.answered.get(resp.status, 0) + 1
            out = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type",)}
            return web.Response(body=data, status=resp.status, headers=out)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def __enter__(self) -> FaultyHttpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class HeldBulkProxy:
    """A TCP proxy (on the running loop) that forwards the ``nth`` ``_bulk`` request to the
    engine and then holds every byte both ways until :meth:`release`: that bulk is applied
    but its answer is lost to a client timeout (an engine that stalls mid-request)."""

    def __init__(self, target: str, nth: int = 2) -> None:
        parts = target.rstrip("/").rsplit(":", 1)
        self.target = (parts[0].split("//")[-1], int(parts[1]))
        self.nth = nth
        self.held = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def release(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
                if b"/_bulk" in data and not self.held.is_set():
                    self.nth -= 1
                    if self.nth <= 0:
                        self._flowing.clear()
                        self.held.set()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except ConnectionError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
