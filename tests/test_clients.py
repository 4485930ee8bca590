"""Client factories: the orjson serializer encodes what opensearch-py's stdlib one does."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from opensearchpy.exceptions import SerializationError
from opensearchpy.serializer import JSONSerializer

from opendisco import Settings, clients


def test_orjson_serializer_matches_the_stdlib_one() -> None:
    fast, slow = clients._serializer(), JSONSerializer()
    doc: dict[str, Any] = {
        "at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "f32": np.float32(0.5),
        "i64": np.int64(7),
        "vec": np.arange(3, dtype=np.float64),
        "id": uuid.UUID(int=1),
        "text": 'quote " brace } ünï',
        "nested": [{"a": 1.25}, None, True],
    }
    assert json.loads(fast.dumps(doc)) == json.loads(slow.dumps(doc))
    assert fast.dumps("already a string") == "already a string"
    assert fast.dumps(b'{"raw": 1}\n') == b'{"raw": 1}\n'  # pre-serialized bulk bodies
    body = '{"hits": {"hits": [{"_id": "x", "_score": 1.5}]}}'
    assert fast.loads(body) == slow.loads(body)
    with pytest.raises(SerializationError):
        fast.loads("{not json")
    with pytest.raises(SerializationError):
        fast.dumps({"x": object()})


async def test_clients_use_it(settings: Settings) -> None:
    sync = clients.opensearch(settings)
    aio = clients.async_opensearch(settings)
    try:
        for c in (sync, aio):
            assert type(c.transport.serializer).__name__ == "OrjsonSerializer"
        assert (await aio.info())["version"]["number"]
        assert sync.info()["version"]["number"]
    finally:
        sync.close()
        await aio.close()
