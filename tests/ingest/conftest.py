"""Ingest fixtures: one namespace per test (alias + items collection) in the session database.

All namespaces share the session database, hence one embedding cache: a text encoded by one
test is a cache hit for the next.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from opendisco import Settings
from opendisco.ingest import Embedder, generate_marketplace, write_sample

_counter = itertools.count()


@pytest.fixture
def ingest_settings(settings: Settings, os_client: Any, mongo_db: Any) -> Iterator[Settings]:
    """A fresh alias and items collection per test (inside the session namespace)."""
    k = next(_counter)
    ns = settings.model_copy(
        update={
            "index_alias": f"{settings.index_alias}-{k}",
            "items_collection": f"items_{k}",
            "sync_overlap_seconds": 2.0,
            "bulk_batch_size": 100,
            "sync_batch_size": 100,
        }
    )
    yield ns
    os_client.indices.delete(index=f"{ns.index_alias}*", ignore_unavailable=True)
    os_client.indices.delete_index_template(name=f"{ns.index_alias}-items", ignore=[404])
    mongo_db[ns.items_collection].drop()
    mongo_db[ns.behaviour_collection].drop()


@pytest.fixture
def embedder(ingest_settings: Settings, model: Any) -> Iterator[Embedder]:
    emb = Embedder(ingest_settings, model)
    yield emb
    emb.close()


@pytest.fixture
def ingest_catalogue(ingest_settings: Settings) -> list[dict[str, Any]]:
    """120 marketplace profiles written to the namespace's items collection."""
    items, users = generate_marketplace(120, seed=11)
    write_sample(ingest_settings, items, users)
    return items
