"""A small fixture query_catalogue indexed directly from index_templates/items.json.

~300 items (movies, listings, profiles) whose texts are encoded with the real model, plus a
few hand-made items the tests aim at (twins differing only in age, hostile-text items,
profiles with two-sided preferences). Everything lives under the session namespace.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opendisco import Settings, clients

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TOPICS = {
    "jazz": ["saxophone", "trumpet", "swing", "bebop", "club"],
    "hiking": ["mountain", "trail", "summit", "forest", "boots"],
    "cooking": ["recipe", "kitchen", "spice", "bread", "pasta"],
    "space": ["rocket", "planet", "orbit", "astronaut", "galaxy"],
    "chess": ["gambit", "endgame", "bishop", "tournament", "rook"],
    "surfing": ["wave", "board", "beach", "ocean", "tide"],
}
GENDERS = ["f", "m", "x"]


def _item(i: int, rng: random.Random) -> dict[str, Any]:
    topic = rng.choice(sorted(TOPICS))
    words = rng.sample(TOPICS[topic], 3)
    kind = rng.choice(["movie", "listing", "profile"])
    doc: dict[str, Any] = {
        "id": f"i{i:04d}",
        "kind": kind,
        "title": f"{topic} {words[0]} {words[1]}",
        "description": f"A {kind} about {topic}: {' and '.join(words)}.",
        "tags": [topic, words[2]],
        "category": topic,
        "owner_id": f"o{i % 17}",
        "created_at": (NOW - timedelta(days=rng.uniform(0, 365))).isoformat(),
        "popularity": round(rng.uniform(0, 1000), 1),
        "quality": round(rng.random(), 3),
        "available": rng.random() > 0.05,
        "location": {"lat": 52 + rng.uniform(-1, 1), "lon": 13 + rng.uniform(-1, 1)},
    }
    if kind == "profile":
        lo = rng.randint(18, 40)
        doc |= {
            "gender": rng.choice(GENDERS),
            "age": rng.randint(18, 60),
            "pref_genders": rng.sample(GENDERS, rng.randint(1, 2)),
            "pref_age_min": lo,
            "pref_age_max": lo + rng.randint(5, 25),
        }
    return doc


def _special() -> list[dict[str, Any]]:
    base = {
        "kind": "movie",
        "category": "test",
        "popularity": 10.0,
        "quality": 0.5,
        "available": True,
        "tags": ["twin"],
    }
    hostile = 'xylophonist "quoted" {"a": {{#toJson}}x{{/toJson}}} \\ </script>'
    return [
        # identical twins (text, vector, features): only created_at differs
        {
            **base,
            "id": "twin-old",
            "title": "quokkatwin documentary",
            "description": "quokkatwin",
            "created_at": (NOW - timedelta(days=200)).isoformat(),
        },
        {
            **base,
            "id": "twin-new",
            "title": "quokkatwin documentary",
            "description": "quokkatwin",
            "created_at": (NOW - timedelta(days=2)).isoformat(),
        },
        {
            **base,
            "id": "hostile",
            "title": hostile,
            "description": "zyzzyva",
            "created_at": (NOW - timedelta(days=30)).isoformat(),
        },
        {
            **base,
            "id": "fresh-jazz",
            "title": "jazz newcomer",
            "tags": ["jazz"],
            "description": "brand new jazz club night",
            "popularity": 0.0,
            "created_at": (NOW - timedelta(days=1)).isoformat(),
        },
    ]


@pytest.fixture(scope="session")
def query_settings(settings: Settings) -> Settings:
    """Own alias and items collection inside the session namespace (other teams' fixtures own
    ``index_alias`` and ``items``)."""
    return settings.model_copy(
        update={"index_alias": f"{settings.index_alias}-q", "items_collection": "items_q"}
    )


@pytest.fixture(scope="session")
def query_catalogue(
    query_settings: Settings, index_items: Any, mongo_db: Any, model: Any
) -> list[dict[str, Any]]:
    rng = random.Random(4)
    docs = [_item(i, rng) for i in range(300)] + _special()
    texts = [f"{d['title']}. {d['description']}. {' '.join(d['tags'])}" for d in docs]
    vecs = model.encode(texts, batch_size=64, normalize_embeddings=True)
    for d, v in zip(docs, vecs, strict=True):
        d["embedding"] = [float(x) for x in v]
        d["behaviour"] = [float(x) for x in v[: query_settings.behaviour_dim]]
    by_id = {d["id"]: d for d in docs}
    by_id["twin-new"]["embedding"] = by_id["twin-old"]["embedding"]
    by_id["twin-new"]["behaviour"] = by_id["twin-old"]["behaviour"]
    index_items(query_settings, docs)
    # the store holds them too (a served page is re-checked against it: serving._page)
    store = mongo_db[query_settings.items_collection]
    store.insert_many([{"_id": d["id"], **{k: v for k, v in d.items() if k != "id"}} for d in docs])
    return docs


@pytest.fixture
async def query_os(query_settings: Settings) -> AsyncIterator[Any]:
    client = clients.async_opensearch(query_settings)
    yield client
    await client.close()
