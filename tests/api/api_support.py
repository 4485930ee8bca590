"""Helpers shared by the API tests (a module with a unique name: ``conftest`` is ambiguous
when several test folders are collected in one run)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn
from http_faults import FaultyHttpProxy
from tcp_faults import TcpProxy

from opendisco import Settings
from opendisco.api import create_app, uvicorn_options
from opendisco.serving import ENCODER_LOADED

__all__ = [
    "TcpProxy",
    "free_port",
    "h",
    "proxied",
    "serve",
    "serve_env",
    "serve_faulty",
    "start_serve",
    "stop_serve",
    "uvicorn_served",
    "wait_fallback",
    "write_catalogue",
]

#: the API tests' catalogue: profiles (and as many members) of ``generate_marketplace``
N_ITEMS = 300


async def write_catalogue(settings: Settings, **reindex: Any) -> dict[str, Any]:
    """The API tests' catalogue (``N_ITEMS`` synthetic profiles and members, one seed) written
    to ``settings``' MongoDB database and reindexed into its alias (the real path;
    ``reindex``: the reindex's keywords)."""
    from opendisco.ingest import generate_marketplace, write_sample
    from opendisco.ingest._reindex import reindex as run_reindex

    items, users = generate_marketplace(N_ITEMS, seed=11)
    write_sample(settings, items, users)
    report = await run_reindex(settings, **reindex)
    return {"items": items, "users": users, "report": report}


async def encoder_loaded(app: Any) -> None:
    """Wait for the started ``app``'s query encoder (it loads in the background: a test's first
    search would otherwise wait for it within its deadline)."""
    await app.state.runtime.discovery.encoder.start()


@contextlib.asynccontextmanager
async def serve(settings: Settings, discovery: Any = None) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running on this loop, reached through httpx's ASGI transport."""
    app = create_app(settings, discovery)
    async with app.router.lifespan_context(app):
        await encoder_loaded(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@contextlib.asynccontextmanager
async def uvicorn_served(
    settings: Settings, timeout_s: float = 30.0, **config: Any
) -> AsyncIterator[tuple[uvicorn.Server, httpx.AsyncClient]]:
    """The app served by uvicorn on a loopback port, on this event loop, as ``opendisco
    serve`` runs it (``config``: uvicorn options on top), and a client of it."""
    port = free_port()
    app = create_app(settings.model_copy(update={"api_gc_freeze": False}))
    opts = {"host": "127.0.0.1", "port": port, "log_level": "warning", "lifespan": "on"}
    server = uvicorn.Server(uvicorn.Config(app, **(opts | uvicorn_options() | config)))
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the API did not start"
            await asyncio.sleep(0.02)
        await encoder_loaded(app)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=timeout_s) as client:
            yield server, client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def wait_fallback(client: Any) -> None:
    """Until the app's degraded fallback has its lists (its first refresh), 10 s at most."""
    rt = client.app.state.runtime
    for _ in range(100):
        if rt.fallback.ready:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("fallback never refreshed")


@contextlib.asynccontextmanager
async def serve_faulty(
    settings: Settings, **overrides: Any
) -> AsyncIterator[tuple[FaultyHttpProxy, httpx.AsyncClient]]:
    """The app with the engine behind an HTTP fault proxy (``http_faults``), its fallback's
    lists ready (``overrides``: settings on top)."""
    with FaultyHttpProxy(settings.opensearch_url) as proxy:
        update = {"opensearch_url": proxy.url, **overrides}
        async with serve(settings.model_copy(update=update)) as client:
            await wait_fallback(client)
            yield proxy, client


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


def server_receive(
    answered: asyncio.Event, gone_after_s: float | None = None
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI server's ``receive`` for one request without a body: the request, then a
    disconnect once the response is complete (``answered`` set; as uvicorn reports it) or
    ``gone_after_s`` into the request (the client leaving)."""
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        if gone_after_s is None:
            await answered.wait()
        else:
            await asyncio.sleep(gone_after_s)
        return {"type": "http.disconnect"}

    return receive


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_env(settings: Settings, state: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of an ``opendisco serve`` child process on ``settings``' index alias and
    database (``state``: its state directory), ``extra`` (``OPENDISCO_`` names) on top."""
    env = {
        **os.environ,
        "OPENDISCO_INDEX_ALIAS": settings.index_alias,
        "OPENDISCO_MONGO_DB": settings.mongo_db,
    }
    if state is not None:
        env["OPENDISCO_STATE_DIR"] = str(state)
    return env | extra


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child ``opendisco serve`` (SIGTERM: a graceful stop; killed after 30 s)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_serve(
    env: Mapping[str, str],
    port: int,
    log: Path,
    workers: int = 1,
    append: bool = False,
    encoder: bool = True,
) -> subprocess.Popen[bytes]:
    """``opendisco serve`` as a child process (stderr to ``log``, added to it when
    ``append``), returned once each of its ``workers`` has started (uvicorn logs each), and
    has loaded its query encoder when ``encoder`` (it loads in the background: without, a
    test's first search waited for it within its deadline), and ``/healthz`` answers (240 s at
    most)."""
    exe = Path(sys.executable).with_name("opendisco")
    cmd = [str(exe), "serve", "--port", str(port), "--log-level", "info"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    started = ["Application startup complete", *([ENCODER_LOADED] if encoder else [])]
    text = log.read_text(errors="replace") if append and log.exists() else ""
    before = {line: text.count(line) for line in started}
    out = log.open("ab" if append else "wb")
    proc = subprocess.Popen(cmd, env=dict(env), stdout=subprocess.DEVNULL, stderr=out)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited: {log.read_text(errors='replace')[-2000:]}"
        text = log.read_text(errors="replace")
        if all(text.count(line) >= before[line] + workers for line in started):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"serve not up in 240 s: {log.read_text(errors='replace')[-2000:]}")
