"""Compare MongoDB (truth) with the documents behind the read alias.

Expected: every MongoDB item that validates and is not a tombstone, at its ``version`` with
the content hash of the document we would build (with its trained behaviour vector: a vector
the engine has not received yet shows as ``mismatched``). Reported: ``missing`` (expected, absent),
``extra`` (present, not expected: deleted, tombstoned or invalid in MongoDB), ``stale``
(present at another version) and ``mismatched`` (right version, but the stored content hash
differs from MongoDB's, or the stored fields no longer hash to the stored hash). Also counted:
``open_dead_letters``, the refusals of this collection still waiting for a fix (``invalid``
counts the invalid documents MongoDB holds now; neither is a difference of the index), and
``partial_builds``: the alias's ``building`` indices behind no alias, left by rebuilds that
died (``rebuilding``: a reindex holds the rebuild lease now, so one of them is its build);
a reindex deletes them first, ``verify --repair`` when no reindex runs. Not a difference
either: the alias never serves them, but they hold disk and heap until deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opendisco._backend import whole_search
from opendisco._exceptions import DocumentInvalid
from opendisco._settings import Settings

from ._behaviour import join_behaviour
from ._build_lease import rebuild_running
from ._document import content_hash, to_index_doc
from ._indices import alias_targets, versioned_indices
from ._io import backends
from ._letters_admin import count_open
from ._packed import PACKED_FIELD
from ._schema import is_tombstone, validate_item
from ._store import items_collection, stream

__all__ = ["VerifyReport", "verify"]


@dataclass
class VerifyReport:
    alias: str
    mongo_items: int = 0
    expected: int = 0
    indexed: int = 0
    invalid: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    stale: list[tuple[str, int, int]] = field(default_factory=list)  # (id, mongo, index)
    mismatched: list[str] = field(default_factory=list)
    open_dead_letters: int = 0
    partial_builds: list[str] = field(default_factory=list)
    rebuilding: bool = False

    @property
    def differences(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.stale) + len(self.mismatched)

    @property
    def ok(self) -> bool:
        return self.differences == 0

    def summary(self) -> str:
        return (
            f"{self.alias}: mongo={self.mongo_items} expected={self.expected} "
            f"indexed={self.indexed} invalid={self.invalid} missing={len(self.missing)} "
            f"extra={len(self.extra)} stale={len(self.stale)} mismatched={len(self.mismatched)} "
            f"open_dead_letters={self.open_dead_letters} "
            f"partial_builds={len(self.partial_builds)}"
            + (" (a reindex is running)" if self.rebuilding else "")
        )


async def _expected(settings: Settings, db: Any, report: VerifyReport) -> dict[str, tuple]:
    out: dict[str, tuple[int, str]] = {}
    async with stream(items_collection(db, settings), {}, 1000) as batches:
        async for page in batches:
            for raw in await join_behaviour(db, settings, page):
                report.mongo_items += 1
                if is_tombstone(raw):
                    continue  # deleted, valid or not: no refusal to count
                try:
                    item = validate_item(raw, behaviour_dim=settings.behaviour_dim)
                except DocumentInvalid:
                    report.invalid += 1
                    continue
                if item["deleted"]:
                    continue
                out[item["_id"]] = (item["version"], to_index_doc(item, None)["content_hash"])
    report.expected = len(out)
    return out


async def _indexed(client: Any, alias: str) -> dict[str, tuple[int, int, str, bool]]:
    out: dict[str, tuple[int, int, str, bool]] = {}
    after: list[Any] | None = None
    while True:
        body: dict[str, Any] = {
            "size": 1000,
            "sort": [{"id": "asc"}],
            "query": {"match_all": {}},
            "_source": {"excludes": ["embedding", PACKED_FIELD]},  # derived, not hashed
            "version": True,
        }
        if after:
            body["search_after"] = after
        # a failed shard's documents are not documents missing from the index
        resp = whole_search(await client.search(index=alias, body=body), "verify page")
        hits = resp["hits"]["hits"]
        for hit in hits:
            src = hit["_source"]
            stored = src.get("content_hash", "")
            intact = content_hash(src) == stored
            out[hit["_id"]] = (hit["_version"], int(src.get("source_version", -1)), stored, intact)
        if len(hits) < 1000:
            return out
        after = hits[-1]["sort"]


async def _partial_builds(client: Any, alias: str) -> list[str]:
    serving = set(await alias_targets(client, alias))
    builds = await versioned_indices(client, alias)
    return sorted(n for n, m in builds.items() if m.get("state") == "building" and n not in serving)


async def verify(
    settings: Settings, *, client: Any | None = None, db: Any | None = None
) -> VerifyReport:
    """Ids, versions and content hashes of MongoDB vs ``settings.index_alias``."""
    report = VerifyReport(alias=settings.index_alias)
    async with backends(settings, client, db, "verify") as (client, db):
        expected = await _expected(settings, db, report)
        await client.indices.refresh(index=settings.index_alias)
        indexed = await _indexed(client, settings.index_alias)
        report.open_dead_letters = await count_open(db, settings.items_collection)
        report.partial_builds = await _partial_builds(client, settings.index_alias)
        report.rebuilding = await rebuild_running(db, settings.index_alias)
    report.indexed = len(indexed)
    for doc_id, (version, digest) in expected.items():
        got = indexed.get(doc_id)
        if got is None:
            report.missing.append(doc_id)
            continue
        os_version, source_version, stored, intact = got
        if os_version != version or source_version != version:
            report.stale.append((doc_id, version, os_version))
        elif stored != digest or not intact:
            report.mismatched.append(doc_id)
    report.extra = sorted(set(indexed) - set(expected))
    report.missing.sort()
    report.stale.sort()
    report.mismatched.sort()
    return report
