"""API fixtures: a small real catalogue, keys of every scope, the app served in-process,
and a TCP proxy in front of OpenSearch that can be paused (like SIGSTOP) or killed (like
kill -9) without touching the shared server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from opendisco import Settings
from opendisco.api import create_app, create_key, revoke_key

N_ITEMS = 300


@pytest.fixture(scope="session")
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "api_rate_limit": 10_000.0,
            "api_rate_burst": 10_000.0,
            "api_key_cache_s": 0.0,
            "api_cursor_secret": "test-cursor-secret",
            # functional tests must not degrade because the shared 2-core machine is busy;
            # the resilience tests set their own short deadlines
            "api_deadline_ms": 5000,
        }
    )


@pytest.fixture(scope="session")
async def catalogue(settings: Settings, mongo_db: Any, os_client: Any) -> dict[str, Any]:
    """``N_ITEMS`` synthetic profiles + users in MongoDB, reindexed into the session alias."""
    from opendisco.ingest import generate_marketplace, write_sample
    from opendisco.ingest._reindex import reindex

    items, users = generate_marketplace(N_ITEMS, seed=11)
    write_sample(settings, items, users)
    report = await reindex(settings)
    return {"items": items, "users": users, "report": report}


@pytest.fixture(scope="session")
def keys(mongo_db: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, scopes in {
        "read": ["read"],
        "write": ["write"],
        "admin": ["admin"],
        "revoked": ["read", "write", "admin"],
    }.items():
        out[name], doc = create_key(mongo_db, f"test-{name}", scopes)
        if name == "revoked":
            assert revoke_key(mongo_db, doc["_id"])
    return out


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


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``pause``/``kill``/``resume`` simulate outages.

    pause: connections stay open (and new ones are accepted by the kernel) but no byte moves,
    like a SIGSTOPped server. kill: every connection is closed and nothing listens, like a
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
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
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._tasks.difference_update(pipes)
        self._writers.discard(writer)
        self._writers.discard(up_writer)

    def pause(self) -> None:
        self._flowing.clear()

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
