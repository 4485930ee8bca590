"""The I/O boundary of one-shot ingest operations (reindex, verify): clients and error mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from opendisco import clients
from opendisco._backend import backend_errors
from opendisco._settings import Settings

__all__ = ["backends"]


@asynccontextmanager
async def backends(
    settings: Settings, client: Any | None, db: Any | None, what: str
) -> AsyncIterator[tuple[Any, Any]]:
    """``(client, db)``: the given ones, or new ones closed on exit; library errors raised
    inside are mapped into the error tree (``"<what> failed"``)."""
    own_client = client is None
    client = client or clients.async_opensearch(settings)
    mongo = clients.mongo_async(settings) if db is None else None
    db = db if db is not None else mongo[settings.mongo_db]  # type: ignore[index]
    try:
        with backend_errors(f"{what} failed"):
            yield client, db
    finally:
        if own_client:
            await client.close()
        if mongo is not None:
            await mongo.close()
