"""Likes between members, mutual likes (matches) and each member's inbox row.

* ``user_likes``: ``{_id: "u\\x1fv", src, dst, item, at}`` — member ``u`` liked ``v``'s profile
  ``item``; when the reverse edge exists the pair is upserted into ``user_matches``:
  ``{_id: "a\\x1fb" (sorted), users: [a, b], at}``.
* ``user_inbox``: one row per member, ``{_id: member, likers: "<JSON {liker: ms}>", matches:
  "<JSON {other: their profile item}>", updated_at}`` — who liked the member (most recent
  :data:`MAX_INBOX`) and whom they matched with. It is what a request reads about mutual likes:
  one point read by ``_id`` gives the ``likers`` candidate source and the ``liked_viewer``
  feature, and the matched profiles whose co-engaged neighbours are the friends-of-matches
  candidates and the ``mutual`` feature. Finding likers in ``user_likes`` would be a query on
  ``dst`` (a full scan on FerretDB); the rows are kept like the item adjacency rows (strings,
  read-modify-written under per-member leases in ``user_inbox_locks``, fenced: ``_store_fence``
  — a row write held past its client's timeout no longer lands over a newer row).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne

from opendisco._backend import backend_errors
from opendisco._store import bulk_write_chunked

from ._graph import SEP
from ._store_fence import lease_documents, replace_fenced

__all__ = [
    "INBOX_LOCKS",
    "MAX_INBOX",
    "USER_INBOX",
    "USER_LIKES",
    "USER_MATCHES",
    "Inbox",
    "UserGraph",
    "ensure_member_indexes",
]

USER_LIKES = "user_likes"
USER_MATCHES = "user_matches"
USER_INBOX = "user_inbox"
INBOX_LOCKS = "user_inbox_locks"
#: likers kept per member (the most recent)
MAX_INBOX = 500


async def ensure_member_indexes(db: Any) -> None:
    with backend_errors("member graph index creation failed"):
        await db[USER_LIKES].create_index("dst")
        await db[USER_MATCHES].create_index("users")


@dataclass(frozen=True)
class Inbox:
    """A member's likers (``{liker: ms}``) and matches (``{other: their profile item}``)."""

    likers: dict[str, int] = field(default_factory=dict)
    matches: dict[str, str] = field(default_factory=dict)

    def to_doc(self, member: str, now: datetime) -> dict[str, Any]:
        likers = dict(sorted(self.likers.items(), key=lambda kv: -kv[1])[:MAX_INBOX])
        return {
            "_id": member,
            "likers": json.dumps(likers, sort_keys=True, separators=(",", ":")),
            "matches": json.dumps(self.matches, sort_keys=True, separators=(",", ":")),
            "updated_at": now,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> Inbox:
        if not doc:
            return cls()
        return cls(
            likers={str(k): int(v) for k, v in json.loads(doc.get("likers") or "{}").items()},
            matches={str(k): str(v) for k, v in json.loads(doc.get("matches") or "{}").items()},
        )


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


class UserGraph:
    """User–user likes, mutual likes (matches) and the members' inbox rows."""

    lease_s = 60.0
    lock_wait_s = 30.0

    def __init__(self, db: Any) -> None:
        self.likes = db[USER_LIKES]
        self.matches = db[USER_MATCHES]
        self.inboxes = db[USER_INBOX]
        self.locks = db[INBOX_LOCKS]

    async def add_likes(
        self, likes: Iterable[tuple[str, str, str]], now: datetime | None = None
    ) -> list[tuple[str, str]]:
        """Record ``(liker, liked member, liked profile item)`` edges; returns the pairs that
        became mutual. Idempotent: a like recorded again changes nothing but its time."""
        now = now or datetime.now(UTC)
        triples = list({(a, b): (a, b, item) for a, b, item in likes if a != b}.values())
        if not triples:
            return []
        await bulk_write_chunked(
            self.likes,
            [
                UpdateOne(
                    {"_id": f"{a}{SEP}{b}"},
                    {"$set": {"src": a, "dst": b, "item": item, "at": now}},
                    upsert=True,
                )
                for a, b, item in triples
            ],
        )
        reverse = [f"{b}{SEP}{a}" for a, b, _ in triples]
        with backend_errors(f"{USER_LIKES} lookup failed"):
            back = {
                d["_id"]: d for d in await self.likes.find({"_id": {"$in": reverse}}).to_list(None)
            }
        mutual = [(a, b, item) for a, b, item in triples if f"{b}{SEP}{a}" in back]
        # both likes of a pair in one batch: one match (reported as its first like completing it)
        pairs = list({frozenset((a, b)): (a, b) for a, b, _ in reversed(mutual)}.values())[::-1]
        ops = []
        for a, b, _ in mutual:
            x, y = sorted((a, b))
            ops.append(
                UpdateOne(
                    {"_id": f"{x}{SEP}{y}"}, {"$set": {"users": [x, y], "at": now}}, upsert=True
                )
            )
        await bulk_write_chunked(self.matches, ops)
        likers: dict[str, dict[str, int]] = defaultdict(dict)
        matched: dict[str, dict[str, str]] = defaultdict(dict)
        for a, b, _ in triples:
            likers[b][a] = _ms(now)
        for a, b, item in mutual:
            matched[a][b] = item  # b's profile, which a liked
            theirs = back[f"{b}{SEP}{a}"].get("item")
            if theirs:  # a's profile, which b liked (likes recorded before items were kept: none)
                matched[b][a] = str(theirs)
        await self._update_inboxes(likers, matched, now)
        return pairs

    async def _update_inboxes(
        self,
        likers: Mapping[str, Mapping[str, int]],
        matched: Mapping[str, Mapping[str, str]],
        now: datetime,
    ) -> None:
        members = sorted(set(likers) | set(matched))
        async with lease_documents(
            self.inboxes, self.locks, members, lease_s=self.lease_s, wait_s=self.lock_wait_s
        ) as held:
            rows = await self.inboxes_of(members)
            docs = []
            for m in members:
                box = rows[m]
                new = Inbox(
                    likers={**box.likers, **likers.get(m, {})},
                    matches={**box.matches, **matched.get(m, {})},
                )
                docs.append(new.to_doc(m, now))
            await replace_fenced(self.inboxes, docs, held=held)

    async def inboxes_of(self, members: Iterable[str]) -> dict[str, Inbox]:
        """Each member's inbox row (empty for members without one); one ``find`` by ``_id``."""
        ids = list(dict.fromkeys(members))
        if not ids:
            return {}
        with backend_errors(f"{USER_INBOX} lookup failed"):
            docs = await self.inboxes.find({"_id": {"$in": ids}}).to_list(None)
        found = {d["_id"]: Inbox.from_doc(d) for d in docs}
        return {m: found.get(m) or Inbox() for m in ids}

    async def inbox(self, member: str) -> Inbox:
        """One member's inbox row (a point read by ``_id``)."""
        with backend_errors(f"{USER_INBOX} lookup failed"):
            return Inbox.from_doc(await self.inboxes.find_one({"_id": member}))

    async def mutual(self, user_id: str) -> list[str]:
        """The members ``user_id`` matched with."""
        return sorted((await self.inbox(user_id)).matches)
