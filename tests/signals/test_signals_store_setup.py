"""The events store's setup when other processes create its collections at the same moment."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from opendisco import Settings, clients
from opendisco.signals import EVENTS, EventProcessor


def _setup(settings: Settings, name: str, start: threading.Barrier, out: list[Any]) -> None:
    """One process's first events call: its own client, its own loop (so no shared lock)."""

    async def run() -> None:
        mongo = clients.mongo_async(settings)
        engine = clients.async_opensearch(settings)
        try:
            proc = EventProcessor(settings, mongo[name], engine)
            start.wait(30)
            await proc._ensure_store()
            out.append(proc._store_ready)
        except Exception as exc:  # the assertion is that there are none
            out.append(exc)
        finally:
            await engine.close()
            await mongo.close()

    asyncio.run(run())


async def test_setup_tolerates_collections_created_by_other_processes_meanwhile(
    settings: Settings, os_client: Any
) -> None:
    """Fresh API processes' first events calls at once: each finds a collection missing and
    creates it; the slower create met NamespaceExists (code 48: pymongo's own check had
    passed) and the call failed (503). Found with three processes posting one batch."""
    mongo = clients.mongo(settings)
    try:
        for k in range(3):
            name = f"{settings.mongo_db}_setup{k}"
            out: list[Any] = []
            start = threading.Barrier(4)
            threads = [
                threading.Thread(target=_setup, args=(settings, name, start, out)) for _ in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert out == [True] * 4, out
            assert EVENTS in mongo[name].list_collection_names()
    finally:
        for k in range(3):
            mongo.drop_database(f"{settings.mongo_db}_setup{k}")
        mongo.close()
