"""Fixtures of the rerank/events tests: a small clustered catalogue in a namespaced index.

Items: 3 categories × 20 (content vectors = category direction + noise), 4 profiles, one item
with a tiny ``exposure_cap``. Everything lives under the session namespace (alias
``t<runid>-itemsrr``, database ``t<runid>rr``) and is removed at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from opendisco import Settings, clients

CATS = ("alpha", "beta", "gamma")
PER_CAT = 20
CAPPED_ITEM = "cap0"


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def catalogue(dim: int, bdim: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(11)
    base = {c: _unit(rng.normal(size=dim)) for c in CATS}
    bbase = {c: _unit(rng.normal(size=bdim)) for c in CATS}
    created = datetime(2026, 1, 1, tzinfo=UTC)
    items = []
    for c in CATS:
        for j in range(PER_CAT):
            items.append(
                {
                    "id": f"{c}{j}",
                    "kind": "movie",
                    "title": f"{c} {j}",
                    "category": c,
                    "owner_id": f"o{j % 10}",
                    "quality": round(float(rng.random()), 3),
                    "popularity": float(rng.integers(1, 100)),
                    "available": True,
                    "created_at": (created + timedelta(days=j)).isoformat(),
                    "embedding": _unit(
                        base[c] + 0.35 * rng.normal(size=dim) / np.sqrt(dim)
                    ).tolist(),
                    "behaviour": _unit(
                        bbase[c] + 0.3 * rng.normal(size=bdim) / np.sqrt(bdim)
                    ).tolist(),
                }
            )
    for p in range(4):
        items.append(
            {
                "id": f"prof{p}",
                "kind": "profile",
                "title": f"person {p}",
                "category": "people",
                "owner_id": f"person{p}",
                "available": True,
                "embedding": _unit(rng.normal(size=dim)).tolist(),
            }
        )
    items.append(
        {
            "id": CAPPED_ITEM,
            "kind": "listing",
            "title": "rarely shown",
            "category": "alpha",
            "exposure_cap": 3,
            "available": True,
            "embedding": _unit(base["alpha"]).tolist(),
        }
    )
    return items


@pytest.fixture(scope="session")
def rr_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"index_alias": f"{settings.index_alias}rr", "mongo_db": f"{settings.mongo_db}rr"}
    )


@pytest.fixture(scope="session")
def rr_items(
    rr_settings: Settings, os_client: Any, index_items: Any
) -> Iterator[list[dict[str, Any]]]:
    items = catalogue(rr_settings.embedding_dim, rr_settings.behaviour_dim)
    index_items(rr_settings, items)
    yield items
    os_client.indices.delete(
        index=f"{rr_settings.index_alias}*", ignore_unavailable=True, expand_wildcards="all"
    )
    client = clients.mongo(rr_settings)
    client.drop_database(rr_settings.mongo_db)
    client.close()


@pytest.fixture
async def rr_db(rr_settings: Settings, rr_items: list[dict[str, Any]]) -> AsyncIterator[Any]:
    client = clients.motor(rr_settings)
    yield client[rr_settings.mongo_db]
    client.close()


@pytest.fixture
async def aos(rr_settings: Settings) -> AsyncIterator[Any]:
    client = clients.async_opensearch(rr_settings)
    yield client
    await client.close()
