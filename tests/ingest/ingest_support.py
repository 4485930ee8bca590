"""Helpers shared by the ingest tests (a module with a unique name: ``conftest`` is ambiguous
when several test folders are collected in one run)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from http_faults import FaultyHttpProxy

from opendisco import Settings, clients, now_ms
from opendisco.ingest import BulkResult, BulkWriter, Embedder, prepare

__all__ = [
    "OPENDISCO",
    "FaultyHttpProxy",
    "HeldBulkProxy",
    "bad_item",
    "bump",
    "dead_letters_of",
    "faulty_engine",
    "worker_env",
    "write_unrecorded",
]

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
        # a worker reconciles after its first pass: what its passes lost would be repaired
        # there, unseen by a test of the passes (``extra`` turns it back on)
        OPENDISCO_SYNC_RECONCILE_INTERVAL="0",
    )
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def faulty_engine(
    settings: Settings, **update: Any
) -> AsyncIterator[tuple[FaultyHttpProxy, Settings, Any]]:
    """``(proxy, settings, client)``: a :class:`FaultyHttpProxy` in front of ``settings``'
    engine (set its faults on ``proxy``), ``settings`` pointed at it with ``update`` applied,
    and an async OpenSearch client of those settings (closed on exit)."""
    with FaultyHttpProxy(settings.opensearch_url) as proxy:
        faulty = settings.model_copy(update={"opensearch_url": proxy.url, **update})
        client = clients.async_opensearch(faulty)
        try:
            yield proxy, faulty, client
        finally:
            await client.close()


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


def bad_item(base: dict[str, Any], doc_id: str) -> dict[str, Any]:
    """A copy of ``base`` as ``doc_id`` at version 1 that validation refuses."""
    doc = copy.deepcopy(base)
    doc.update(_id=doc_id, version=1, updated_at=now_ms(), popularity="lots")  # not a number
    return doc


def bump(coll: Any, doc_id: str, **fields: Any) -> None:
    """Set ``fields`` on a MongoDB item with the next version (what sync reads as a change)."""
    coll.update_one(
        {"_id": doc_id}, {"$set": {"updated_at": now_ms(), **fields}, "$inc": {"version": 1}}
    )


def dead_letters_of(mongo_db: Any, settings: Settings) -> dict[Any, dict[str, Any]]:
    """``doc_id -> record`` of this test's dead letters (the session's tests share one
    ``dead_letters``)."""
    found = mongo_db["dead_letters"].find({"collection": settings.items_collection})
    return {rec["doc_id"]: rec for rec in found}


async def write_unrecorded(
    settings: Settings, client: Any, embedder: Embedder, doc: dict[str, Any]
) -> BulkResult:
    """``doc`` written into the alias as sync writes it, acknowledged, and nothing recorded
    in ``dead_letters`` (a worker killed between the bulk's answer and its record)."""
    prepared = prepare([doc], embedder, settings, source="sync", delete_invalid=True)
    writer = BulkWriter(client, settings, settings.index_alias, alias=True)
    return await writer.write(prepared.actions)
