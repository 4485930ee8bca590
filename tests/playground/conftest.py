"""Playground fixtures: a small marketplace ingested through the real path, admin and read
keys, the API served by uvicorn on a loopback port, and headless Chromium (Debian's package,
driven by Playwright with the system executable — ``./dev`` installs it)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from opendisco import Settings, clients
from opendisco.api import create_app, create_key

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
N_MEMBERS = 150


@pytest.fixture(scope="session")
def pg_versions() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="opendisco-pg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_settings(settings: Settings, pg_versions: Path) -> Settings:
    return settings.model_copy(
        update={
            "index_alias": f"{settings.index_alias}-pg",
            "mongo_db": f"{settings.mongo_db}pg",
            "api_rate_limit": 10_000.0,
            "api_rate_burst": 10_000.0,
            "api_key_cache_s": 0.0,
            "api_deadline_ms": 5000,
            "playground_dir": pg_versions,
            "playground_eval_dataset": "synthetic:60",
            "playground_eval_users": 6,
        }
    )


@pytest.fixture(scope="session")
async def pg_market(pg_settings: Settings, model: Any) -> AsyncIterator[dict[str, Any]]:
    """``N_MEMBERS`` members (profiles + users) in MongoDB, reindexed into the alias."""
    from opendisco.ingest import Embedder, generate_marketplace, write_sample
    from opendisco.ingest._reindex import reindex

    items, users = generate_marketplace(N_MEMBERS, seed=5)
    write_sample(pg_settings, items, users)
    report = await reindex(pg_settings, embedder=Embedder(pg_settings, model=model))
    assert report.indexed == len(items), report
    yield {"items": {i["_id"]: i for i in items}, "users": {u["_id"]: u for u in users}}
    with clients.mongo(pg_settings) as mc:
        mc.drop_database(pg_settings.mongo_db)


@pytest.fixture(scope="session")
def pg_keys(pg_settings: Settings, pg_market: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    with clients.mongo(pg_settings) as mc:
        db = mc[pg_settings.mongo_db]
        for name, scopes in {"admin": ["admin"], "read": ["read"], "gone": ["admin"]}.items():
            out[name], doc = create_key(db, f"pg-{name}", scopes)
            out[f"{name}_id"] = doc["_id"]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_server(pg_settings: Settings, pg_keys: dict[str, str], model: Any) -> Iterator[str]:
    """The app (``create_app``, real lifespan) served by uvicorn on 127.0.0.1 in a thread."""
    import uvicorn

    port = _free_port()
    settings = pg_settings.model_copy(update={"api_port": port, "api_gc_freeze": False})

    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the playground API did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
async def pg_http(pg_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=pg_server, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: ./dev installs Debian's chromium package")
    return CHROMIUM


@pytest.fixture
async def page(chromium_path: str, tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh headless Chromium page (its own profile directory)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium_path,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 1000},
        )
        try:
            pg = ctx.pages[0] if ctx.pages else await ctx.new_page()
            pg.set_default_timeout(30_000)
            yield pg
        finally:
            await asyncio.wait_for(ctx.close(), 30)
