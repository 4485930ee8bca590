"""Seeded synthetic two-sided marketplace (member profiles + users) and writing samples.

``generate_marketplace`` is pure and deterministic for a seed; ``write_sample`` upserts items
and users into MongoDB, bumping ``version`` of items that already exist so external
versioning in OpenSearch accepts the new copy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReplaceOne

from opendisco import clients
from opendisco._backend import backend_errors
from opendisco._domain import USERS_COLLECTION
from opendisco._settings import Settings
from opendisco._store import MAX_WRITES_PER_COMMAND, now_ms

__all__ = [
    "INTEREST_GROUPS",
    "generate_marketplace",
    "write_sample",
]

INTEREST_GROUPS: dict[str, list[str]] = {
    "outdoors": ["hiking", "climbing", "surfing", "camping", "trail running", "kayaking"],
    "music": ["jazz", "indie rock", "techno", "opera", "vinyl", "karaoke"],
    "food": ["coffee", "baking", "street food", "wine", "vegan cooking", "ramen"],
    "arts": ["poetry", "photography", "painting", "theatre", "museums", "film noir"],
    "games": ["chess", "board games", "video games", "puzzles", "tabletop rpg", "poker"],
    "wellness": ["yoga", "meditation", "running", "cycling", "swimming", "pilates"],
    "tech": ["open source", "robotics", "astronomy", "3d printing", "ai", "retro computing"],
    "travel": ["backpacking", "road trips", "languages", "city breaks", "trains", "islands"],
}
CITIES = [
    ("Lisbon", 38.72, -9.14),
    ("Berlin", 52.52, 13.40),
    ("Paris", 48.86, 2.35),
    ("Madrid", 40.42, -3.70),
    ("Amsterdam", 52.37, 4.90),
    ("Milan", 45.46, 9.19),
    ("Dublin", 53.35, -6.26),
    ("Vienna", 48.21, 16.37),
]
NAMES = [
    "Ana", "Ben", "Carla", "Dev", "Elif", "Finn", "Gia", "Hugo", "Ines", "Jon", "Kai", "Lena",
    "Milo", "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Vic", "Wen", "Yara",
]  # fmt: skip
OPENERS = [
    "Weekend {0} enthusiast who never says no to {1}.",
    "Happiest when {0} turns into {1} with good company.",
    "Looking for someone to share {0}, {1} and long conversations.",
    "Part-time {0} nerd, full-time fan of {1}.",
    "New in {city}, into {0} and slowly getting good at {1}.",
]
CLOSERS = [
    "Ask me about my favourite {2} spot in {city}.",
    "Bonus points if you can teach me {2}.",
    "Sunday plans usually involve {2}.",
    "Currently saving up for a {2} trip.",
]
GENDERS = ("f", "m", "x")


def _ms(dt: datetime) -> datetime:
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def _person(rng: random.Random) -> dict[str, Any]:
    groups = rng.sample(sorted(INTEREST_GROUPS), k=rng.choice((1, 2, 2, 3)))
    interests = sorted({rng.choice(INTEREST_GROUPS[g]) for g in groups for _ in range(2)})
    city, lat, lon = rng.choice(CITIES)
    gender = rng.choices(GENDERS, weights=(45, 45, 10))[0]
    age = rng.randint(19, 64)
    pref = (
        {
            "f": ["m"],
            "m": ["f"],
            "x": ["f", "m", "x"],
        }[gender]
        if rng.random() < 0.8
        else sorted(rng.sample(GENDERS, k=rng.randint(1, 3)))
    )
    return {
        "groups": groups,
        "interests": interests,
        "city": city,
        "location": {
            "lat": round(lat + rng.gauss(0, 0.05), 5),
            "lon": round(lon + rng.gauss(0, 0.05), 5),
        },
        "gender": gender,
        "age": age,
        "pref_genders": pref,
        "pref_age_min": max(18, age - rng.randint(3, 10)),
        "pref_age_max": min(99, age + rng.randint(3, 12)),
    }


def generate_marketplace(
    n: int, seed: int = 7, *, now: datetime | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` member profiles (items ``p<i>``, kind ``profile``) and their users ``u<i>``.

    Deterministic for ``(n, seed, now)``; ``now`` defaults to a fixed date so two calls agree.
    """
    rng = random.Random(seed)
    now = now or datetime(2026, 1, 1, tzinfo=UTC)
    items: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []
    for i in range(n):
        p = _person(rng)
        created = _ms(now - timedelta(days=rng.uniform(0, 720), seconds=rng.uniform(0, 86400)))
        updated = _ms(created + timedelta(days=rng.uniform(0, (now - created).days + 0.5)))
        name = rng.choice(NAMES)
        picks = [*p["interests"], *rng.sample(sorted(INTEREST_GROUPS["travel"]), 1)]
        a, b, c = picks[0], picks[-1], rng.choice(picks)
        bio = " ".join(
            [
                rng.choice(OPENERS).format(a, b, c, city=p["city"]),
                rng.choice(CLOSERS).format(a, b, c, city=p["city"]),
            ]
        )
        uid = f"u{i}"
        popularity = round(rng.paretovariate(1.5) - 1.0, 4) * 10
        items.append(
            {
                "_id": f"p{i}",
                "kind": "profile",
                "title": f"{name}, {p['age']} — {' & '.join(p['interests'][:2])}",
                "description": bio,
                "tags": p["interests"],
                "category": p["groups"][0],
                "owner_id": uid,
                "created_at": created,
                "updated_at": updated,
                "version": 1,
                "deleted": False,
                "year": None,
                "location": p["location"],
                "popularity": round(popularity, 4),
                "quality": round(rng.betavariate(5, 2), 4),
                "available": rng.random() > 0.05,
                "exposure_cap": 200 if rng.random() < 0.1 else None,
                "gender": p["gender"],
                "age": p["age"],
                "pref_genders": p["pref_genders"],
                "pref_age_min": p["pref_age_min"],
                "pref_age_max": p["pref_age_max"],
            }
        )
        users.append(
            {
                "_id": uid,
                "profile_id": f"p{i}",
                "interests": p["interests"],
                "location": p["location"],
                "gender": p["gender"],
                "age": p["age"],
                "pref_genders": p["pref_genders"],
                "pref_age_min": p["pref_age_min"],
                "pref_age_max": p["pref_age_max"],
                "created_at": created,
            }
        )
    return items, users


def _upsert(coll: Any, docs: Sequence[dict[str, Any]], existing: set[Any]) -> int:
    """Insert new documents in bulk, replace existing ones; returns documents written.

    Upserts cost a lookup per document on FerretDB/SQLite (about 40x slower than a bulk
    insert), so only documents that already exist go through ``ReplaceOne``.
    """
    fresh = [d for d in docs if d["_id"] not in existing]
    written = 0
    for i in range(0, len(fresh), MAX_WRITES_PER_COMMAND):
        written += len(
            coll.insert_many(fresh[i : i + MAX_WRITES_PER_COMMAND], ordered=False).inserted_ids
        )
    old = [d for d in docs if d["_id"] in existing]
    for i in range(0, len(old), MAX_WRITES_PER_COMMAND):
        part = old[i : i + MAX_WRITES_PER_COMMAND]
        res = coll.bulk_write(
            [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in part], ordered=False
        )
        written += res.upserted_count + res.modified_count
    return written


def write_sample(
    settings: Settings,
    items: Sequence[dict[str, Any]],
    users: Sequence[dict[str, Any]] = (),
    *,
    batch: int = 1000,
) -> dict[str, int]:
    """Upsert ``items`` into ``settings.items_collection`` and ``users`` into ``USERS_COLLECTION``.

    An item that already exists gets ``version = max(given, stored + 1)`` and a fresh
    ``updated_at`` so sync and reindex pick the new copy up. Returns counts.
    """
    with clients.mongo(settings) as client, backend_errors("writing sample failed"):
        db = client[settings.mongo_db]
        coll = db[settings.items_collection]
        written = 0
        for start in range(0, len(items), batch):
            chunk = [dict(d) for d in items[start : start + batch]]
            ids = [d["_id"] for d in chunk]
            stored = {
                d["_id"]: d.get("version") or 0
                for d in coll.find({"_id": {"$in": ids}}, {"version": 1})
            }
            ts = now_ms()
            for d in chunk:
                if d["_id"] in stored:
                    d["version"] = max(int(d.get("version") or 1), int(stored[d["_id"]]) + 1)
                    d["updated_at"] = ts
                d.setdefault("version", 1)
                d.setdefault("updated_at", ts)
            written += _upsert(coll, chunk, set(stored))
        if items:
            coll.create_index([("updated_at", 1), ("_id", 1)])
        users_written = 0
        for start in range(0, len(users), batch):
            chunk = list(users[start : start + batch])
            ids = [u["_id"] for u in chunk]
            existing = {
                d["_id"] for d in db[USERS_COLLECTION].find({"_id": {"$in": ids}}, {"_id": 1})
            }
            users_written += _upsert(db[USERS_COLLECTION], chunk, existing)
    return {"items": written, "users": users_written}
