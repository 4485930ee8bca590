"""Helpers shared by the API tests (a module with a unique name: ``conftest`` is ambiguous
when several test folders are collected in one run)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from tcp_faults import TcpProxy

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
