"""The served-list log (``signals.ServedLog``, the API's side effect) through a MongoDB outage:
the store cut off (a TCP proxy killed, like kill -9; the shared server is never touched)
while lists are logged, then back. (Here beside the other proxy tests: ``TcpProxy``.)"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
from api_support import free_port, h, start_serve
from served_lists import served_list, until
from tcp_faults import store_proxy

from opendisco import Settings, clients
from opendisco.signals import SERVED_LISTS, ServedLog, read_spooled, spool_dir


async def test_lists_logged_while_the_store_is_down_are_written_when_it_is_back(
    settings: Settings,
) -> None:
    """Before: a failed write lost its batch (logged as "lists lost") and counted it in
    ``failed`` only, so ``opendisco_api_served_log_dropped`` stayed 0: 7 of 743 lists of a
    probe's answers were missing after a 10 s kill -9 of FerretDB, unseen by the alert."""
    name = f"{settings.mongo_db}slo"
    proxy = await store_proxy(settings.mongo_url)
    cut = settings.model_copy(update={"mongo_url": proxy.mongo_url})
    mongo = clients.mongo_async(cut)
    direct = clients.mongo_async(settings)
    try:
        log = ServedLog(mongo[name], max_rows=10, flush_every_s=0.05)
        log.log(served_list("before"))
        await until(lambda: log.written == 1)
        await proxy.kill()
        for j in range(60):  # more than one command's worth
            log.log(served_list(f"down-{j:02d}"))
        await until(lambda: log.failed > 0)  # the flusher tried and the store refused
        assert (log.written, log.pending, log.dropped) == (1, 60, 0)
        await proxy.resume()
        await until(lambda: log.written == 61)
        assert (log.pending, log.dropped) == (0, 0)
        assert await direct[name][SERVED_LISTS].count_documents({}) == 61
        # the store down at shutdown: drain gives up after one failed write, counting the rest
        await proxy.kill()
        for j in range(3):
            log.log(served_list(f"end-{j}"))
        await asyncio.wait_for(log.drain(), 60)
        assert (log.written, log.pending, log.dropped) == (61, 0, 3)
    finally:
        await proxy.close()
        await mongo.close()
        await direct.drop_database(name)
        await direct.close()


async def test_lists_served_during_an_outage_survive_a_kill_9_of_the_api(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str], tmp_path: Path
) -> None:
    """``opendisco serve`` as a child process, its MongoDB behind a proxy that is cut: the
    anonymous ``similar`` lists it keeps serving from the engine are spooled, the process is
    killed with SIGKILL, and the process started after it (store back) writes every one of
    them to ``served_lists``. Before the spool they waited in the queue and died with it."""
    proxy = await store_proxy(api_settings.mongo_url)
    port = free_port()
    env = {
        **os.environ,
        "OPENDISCO_INDEX_ALIAS": api_settings.index_alias,
        "OPENDISCO_MONGO_DB": api_settings.mongo_db,
        "OPENDISCO_MONGO_URL": proxy.mongo_url,
        "OPENDISCO_STATE_DIR": str(tmp_path),
        "OPENDISCO_API_KEY_CACHE_S": "600",  # the key was checked before the store went away
        "OPENDISCO_API_DEADLINE_MS": "5000",
        # the signals' copies (read at start-up) stay fresh through the outage: with a read a
        # second they went stale 5 s into it, the features then read the store, and a loaded
        # machine's twelve requests outlasting that were answered 503 (no safe fallback)
        "OPENDISCO_SIGNAL_COPIES_S": "30",
    }
    item = str(api_catalogue["items"][0]["_id"])
    direct = clients.mongo_async(api_settings)
    coll = direct[api_settings.mongo_db][SERVED_LISTS]
    served: list[str] = []
    proc = None
    try:
        proc = await asyncio.to_thread(start_serve, env, port, tmp_path / "serve-1.log")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            async def similar() -> str:
                resp = await client.get(f"/v1/items/{item}/similar?k=5", headers=h(keys["read"]))
                assert resp.status_code == 200, resp.text
                return str(resp.json()["request_id"])

            first = await similar()  # caches the key; written while the store is up
            await proxy.kill()
            for _ in range(12):
                served.append(await similar())
                await asyncio.sleep(0.2)
            spool = spool_dir(api_settings.model_copy(update={"state_dir": tmp_path}))

            def spooled() -> set[str]:
                out: set[str] = set()
                for p in spool.glob("*.bson"):
                    out |= {str(d["_id"]) for d in read_spooled(p.read_bytes())[0]}
                return out

            await until(lambda: set(served) <= spooled(), timeout=60)
        proc.kill()  # SIGKILL: no shutdown, no drain
        assert proc.wait(30) == -9
        assert await coll.count_documents({"_id": {"$in": served}}) == 0
        await proxy.resume()
        proc = await asyncio.to_thread(start_serve, env, port, tmp_path / "serve-2.log")
        end = time.monotonic() + 90
        while await coll.count_documents({"_id": {"$in": served}}) < len(served):
            assert time.monotonic() < end, "the spooled lists were not written back"
            await asyncio.sleep(0.2)
        assert await coll.count_documents({"_id": first}) == 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        await proxy.close()
        await direct.close()
