"""Compare MongoDB (truth) with the documents behind the read alias.

Expected: every MongoDB item that validates and is not a tombstone, at its ``version`` with
the content hash of the document we would build (with its trained behaviour vector: a vector
the engine has not received yet shows as ``mismatched``). Reported: ``missing`` (expected, absent),
``extra`` (present, not expected: deleted, tombstoned or invalid in MongoDB), ``stale``
(present at another version; ``ahead`` counts those the index holds at a *newer* version
than MongoDB's — versions went back: a restore, a re-created document — which ``verify
--repair`` removes, see ``_reconcile``) and ``mismatched`` (right version, but the stored
content hash differs from MongoDB's, or the stored fields no longer hash to the stored
hash). Also counted:
``open_dead_letters``, the refusals of this collection still waiting for a fix (``invalid``
counts the invalid documents MongoDB holds now; neither is a difference of the index), and
``partial_builds``: the alias's ``building`` indices behind no alias, left by rebuilds that
died (``rebuilding``: a reindex holds the rebuild lease now, so one of them is its build);
a reindex deletes them first, ``verify --repair`` when no reindex runs. Not a difference
either: the alias never serves them, but they hold disk and heap until deleted.

And ``profiles_disagreeing``: the profiles (valid, not deleted, with an owner) whose member's
side of the two-sided rules (``MEMBER_RULE_FIELDS``) differs from their owner's ``users``
document — the rules read it from there when the member views and from the profile when
they are the candidate, so an app that wrote one of the two has the member checked against
two sets of preferences (``disagreeing_fields`` counts them by field; a list is compared as
the set of its values). Not a difference of the index either (sync copies the profile as
it is), but a fault of the data: ``opendisco verify`` exits 1 on it too. Costs one
``_id $in`` read of ``users`` per page of items that holds profiles (FerretDB pushes it
down; nothing kept beyond the page); a profile whose owner has no ``users`` document is not
compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opendisco._backend import whole_search
from opendisco._domain import MEMBER_RULE_FIELDS, USERS_COLLECTION
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

__all__ = ["VerifyReport", "differing_rule_fields", "verify"]


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
    profiles_disagreeing: list[str] = field(default_factory=list)
    disagreeing_fields: dict[str, int] = field(default_factory=dict)

    @property
    def differences(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.stale) + len(self.mismatched)

    @property
    def ahead(self) -> int:
        """The stale documents the index holds at a newer version than MongoDB's."""
        return sum(1 for _, version, indexed in self.stale if indexed > version)

    @property
    def ok(self) -> bool:
        return self.differences == 0

    def summary(self) -> str:
        return (
            f"{self.alias}: mongo={self.mongo_items} expected={self.expected} "
            f"indexed={self.indexed} invalid={self.invalid} missing={len(self.missing)} "
            f"extra={len(self.extra)} stale={len(self.stale)} ahead={self.ahead} "
            f"mismatched={len(self.mismatched)} "
            f"profiles_disagreeing={len(self.profiles_disagreeing)}"
            + (f" {self.disagreeing_fields}" if self.disagreeing_fields else "")
            + f" open_dead_letters={self.open_dead_letters} "
            f"partial_builds={len(self.partial_builds)}"
            + (" (a reindex is running)" if self.rebuilding else "")
        )


async def _expected(settings: Settings, db: Any, report: VerifyReport) -> dict[str, tuple]:
    """``{id: (version, content hash)}`` of what the index should hold; each page's member
    profiles compared with their ``users`` documents on the way (:func:`_disagreeing`)."""
    out: dict[str, tuple[int, str]] = {}
    async with stream(items_collection(db, settings), {}, 1000) as batches:
        async for page in batches:
            profiles: dict[str, tuple[str, Mapping[str, Any]]] = {}
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
                if item["kind"] == "profile" and item["owner_id"]:
                    profiles[item["_id"]] = (item["owner_id"], raw)
            await _disagreeing(db, profiles, report)
    report.expected = len(out)
    report.profiles_disagreeing.sort()
    report.disagreeing_fields = dict(sorted(report.disagreeing_fields.items()))
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


def differing_rule_fields(profile: Mapping[str, Any], user: Mapping[str, Any]) -> list[str]:
    """The :data:`MEMBER_RULE_FIELDS` whose values differ between a member's ``profile`` (an
    item) and their ``users`` document (pure): absent and None agree, and so do two lists of
    the same values (an empty one is no value: no preference stated)."""
    return [
        f for f in MEMBER_RULE_FIELDS if _rule_value(profile.get(f)) != _rule_value(user.get(f))
    ]


def _rule_value(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return frozenset(map(repr, value)) or None
    return value


async def _disagreeing(
    db: Any, profiles: Mapping[str, tuple[str, Mapping[str, Any]]], report: VerifyReport
) -> None:
    """Add to ``report`` the ``profiles`` (``{id: (owner, stored document)}``, a page's)
    whose rule fields differ from their owner's ``users`` document: one ``_id $in`` read."""
    if not profiles:
        return
    query = {"_id": {"$in": sorted({owner for owner, _ in profiles.values()})}}
    fields = dict.fromkeys(MEMBER_RULE_FIELDS, 1)
    users: dict[str, Mapping[str, Any]] = {}
    async with stream(db[USERS_COLLECTION], query, len(profiles), projection=fields) as batches:
        async for found in batches:
            users.update((str(u["_id"]), u) for u in found)
    counts = report.disagreeing_fields
    for profile_id, (owner, doc) in profiles.items():
        user = users.get(owner)
        if user is not None and (differ := differing_rule_fields(doc, user)):
            report.profiles_disagreeing.append(profile_id)
            for name in differ:
                counts[name] = counts.get(name, 0) + 1


async def verify(
    settings: Settings, *, client: Any | None = None, db: Any | None = None
) -> VerifyReport:
    """Ids, versions and content hashes of MongoDB vs ``settings.index_alias``; the members'
    profiles vs their ``users`` documents (the module docstring)."""
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
