"""Impression log: one MongoDB document per served list, written in the background in batches."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["ImpressionLog"]

log = logging.getLogger("opendisco.api")


class ImpressionLog:
    """``log()`` never blocks a request; a flusher task ``insert_many``s what has queued."""

    def __init__(self, db: Any, collection: str = "impressions", max_queue: int = 10_000) -> None:
        self._coll = db[collection]
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_queue)
        self.dropped = 0
        self.written = 0

    def log(self, doc: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(doc)
        except asyncio.QueueFull:
            self.dropped += 1

    async def flush(self, batch: int = 500) -> int:
        docs: list[dict[str, Any]] = []
        while not self._queue.empty() and len(docs) < batch:
            docs.append(self._queue.get_nowait())
        if not docs:
            return 0
        try:
            await self._coll.insert_many(docs, ordered=False)
            self.written += len(docs)
        except Exception as exc:  # store down: impressions are best effort
            self.dropped += len(docs)
            log.warning("impression log write failed (%d dropped): %r", len(docs), exc)
        return len(docs)

    async def run(self, every_s: float = 0.2) -> None:
        while True:
            await asyncio.sleep(every_s)
            while await self.flush():
                pass

    async def drain(self) -> None:
        while await self.flush():
            pass
