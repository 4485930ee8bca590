"""``opendisco serve`` stops within its budget when its backends do not answer (a real child
process; the engine and the store each behind a TCP proxy that is paused, the shared servers
untouched): what compose's 10 s stop grace and a rolling restart at peak need.

* Serving, with served impressions and lists not written yet: the drain and the rate share's
  withdrawal run side by side, the clients' close is cut to what is left of
  :data:`~opendisco.api.STOP_S` — before, 5 s + 2 s + 2 s one after another (~9.2 s) —
  and what the drain could not write stays in the served journal for the next process.
* Still starting: the stop cancels the start-up (the encoder's load, the counters index's
  ensure, the cursor secret's lookup) — before, uvicorn let it run to its end, then tore down
  (~15 s here; 60–90 s seen with two workers on a loaded machine)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from api_support import free_port, h, start_serve
from tcp_faults import TcpProxy, store_proxy

from opendisco import Settings
from opendisco.api import STOP_S

OPENDISCO = Path(sys.executable).with_name("opendisco")


async def _proxies(settings: Settings) -> tuple[TcpProxy, TcpProxy, dict[str, str]]:
    """Proxies in front of both backends and a ``serve`` environment that goes through them."""
    target = urlsplit(settings.opensearch_url)
    engine = TcpProxy(target.hostname or "127.0.0.1", target.port or 9200)
    await engine.start()
    store = await store_proxy(settings.mongo_url)
    env = {
        **os.environ,
        "OPENDISCO_OPENSEARCH_URL": engine.url,
        "OPENDISCO_MONGO_URL": store.mongo_url,
        "OPENDISCO_INDEX_ALIAS": settings.index_alias,
        "OPENDISCO_MONGO_DB": settings.mongo_db,
        "OPENDISCO_EXPLORE_RATE": "0",
    }
    return engine, store, env


async def _stopped(proc: subprocess.Popen[bytes], signals: list[int]) -> float:
    """Seconds from the first of ``signals`` (0.2 s apart) to the process's exit."""
    t0 = time.monotonic()
    for i, sig in enumerate(signals):
        if i:
            await asyncio.sleep(0.2)
        proc.send_signal(sig)
    try:
        await asyncio.wait_for(asyncio.to_thread(proc.wait), 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return time.monotonic() - t0


async def test_a_replica_stopped_with_its_backends_paused_exits_within_its_budget(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str], tmp_path: Path
) -> None:
    engine, store, env = await _proxies(api_settings)
    env |= {
        "OPENDISCO_STATE_DIR": str(tmp_path),
        "OPENDISCO_API_KEY_CACHE_S": "600",
        "OPENDISCO_EXPOSURE_FLUSH_S": "60",  # the served impressions wait for the drain
        # the engine's client waits 4 deadlines (20 s): the drain's write to the paused engine
        # waits, not fails, past the drain's 5 s (as on a slow engine, whatever the deadline)
        "OPENDISCO_API_DEADLINE_MS": "5000",
    }
    port = free_port()
    log = tmp_path / "serve.log"
    users = [str(u["_id"]) for u in api_catalogue["users"][:4]]
    proc = None
    try:
        proc = await asyncio.to_thread(start_serve, env, port, log)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            shown = 0
            for user in users:
                resp = await client.get(
                    f"/v1/users/{user}/recommendations", headers=h(keys["read"])
                )
                assert resp.status_code == 200, resp.text
                shown += len(resp.json()["items"])
        assert shown
        engine.pause()
        store.pause()
        await asyncio.sleep(0.3)
        took = await _stopped(proc, [signal.SIGTERM])
        text = log.read_text(errors="replace")
        # before: the drain 5 s, then the rate share's withdrawal 2 s, then the close 2 s
        assert took < STOP_S + 1.5, (took, text[-3000:])
        print(f"stopped in {took:.2f} s")
        assert proc.returncode in (0, -signal.SIGTERM), text[-3000:]
        assert "served impressions not counted" in text, text[-3000:]
        journals = list((tmp_path / "served-journal").glob("*/*.jsonl"))
        assert journals and any(p.stat().st_size for p in journals), journals  # kept
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        await engine.close()
        await store.close()


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]])
async def test_a_replica_stopped_while_it_starts_exits_at_once(
    api_settings: Settings, tmp_path: Path, signals: list[int]
) -> None:
    engine, store, env = await _proxies(api_settings)
    engine.pause()  # backends unreachable from the start
    store.pause()
    env["OPENDISCO_STATE_DIR"] = str(tmp_path)
    log = tmp_path / "serve.log"
    cmd = [str(OPENDISCO), "serve", "--port", str(free_port())]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        deadline = time.monotonic() + 120
        while "Waiting for application startup" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # its start-up waiting on the paused backends
        took = await _stopped(proc, signals)
        text = log.read_text(errors="replace")
        # before: the start-up ran on (the encoder, the engine's and the store's timeouts),
        # then the teardown waited on both backends
        assert took < 4.0, (took, text[-3000:])
        assert "stopped during start-up" in text, text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await engine.close()
        await store.close()
