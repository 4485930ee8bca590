"""Where sync stands: one checkpoint per partition, and the floor a reindex leaves behind.

``sync_state`` holds, per (scope, feed kind, partition layout, partition), a document
``{_id: "<alias>:<collection>:<kind>:p<k>of<P>", ts | token, floor_index}`` — written only by
the worker holding that partition's lease, after every change up to it was acknowledged. The
kinds: ``polling`` and ``change_stream`` (the items feed), ``behaviour`` (the feed of trained
vectors, ``_behaviour``: a watermark like ``polling``, and ``model``: the model's collection it
was read from, so a partition reads a model switched in since from its vectors' stamp).

The **floor** (``<alias>:<collection>:floor``, ``{ts, index, model}``: ``model``, the behaviour
model whose vectors the new index got) is written by a reindex after
its alias swap: writes made after its catch-up started may have been applied by a running
sync to the *old* index. A partition whose checkpoint has not yet seen this floor
(``floor_index`` differs) restarts its next pass from ``min(checkpoint, floor.ts)`` and records
``floor_index`` with the commits of that pass. The reindex writes only the floor, never a
checkpoint, so a sync committing concurrently cannot overwrite it.

The reindex writes the same floor as *pending* (``<alias>:<collection>:floor-pending``) just
before its swap: one killed between the swap and the floor left sync nothing to replay, and
what sync had sent to the old index after the catch-up read past it stayed stale in the new
one. A pending floor newer than the floor is the floor, under its own identity
(``<index>~pending``); once the alias serves its index, a sync saves it as the final floor
(:func:`settle_floor`), whose new identity makes every partition replay it again (a pass may
have replayed the pending floor into the old index before the swap). A pending floor whose
swap never happened costs one replay into the old index.

A partition with no checkpoint of its own (first run, or a new ``sync_partitions`` layout)
starts from the oldest checkpoint of any layout for the same scope (or the legacy single
checkpoint), else the floor, else the beginning of time (polling) / a ``SyncGap``
(change streams).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne

from opendisco._backend import backend_errors
from opendisco._settings import Settings
from opendisco._store import bulk_write_chunked, now_ms

from ._partitions import scope
from ._store import SYNC_STATE, state_key

__all__ = [
    "Checkpoint",
    "Floor",
    "load_checkpoints",
    "load_floor",
    "save_checkpoints",
    "save_floor",
    "settle_floor",
    "token_order",
]


@dataclass
class Checkpoint:
    partition: int
    ts: datetime | None = None  # polling watermark
    token: Any = None  # change-stream resume token
    floor_index: str | None = None  # the floor this partition has replayed
    #: behaviour: the model (collection) the watermark was read from (None: not recorded,
    #: written before models were: taken as the one served)
    model: str | None = None
    fields: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Floor:
    ts: datetime
    index: str
    #: the behaviour model (collection) whose vectors the reindex sent (None: not recorded)
    model: str | None = None


def checkpoint_id(settings: Settings, kind: str, partition: int) -> str:
    return f"{scope(settings)}:{kind}:p{partition}of{settings.sync_partitions}"


def _floor_id(settings: Settings, *, pending: bool = False) -> str:
    return f"{scope(settings)}:floor" + ("-pending" if pending else "")


#: the identity of a pending floor (see the module docstring): never a real index name
PENDING = "~pending"


def _utc(value: Any) -> datetime | None:
    return value.astimezone(UTC) if isinstance(value, datetime) else None


async def load_floor(db: Any, settings: Settings) -> Floor | None:
    """The floor, or a pending floor newer than it (a reindex died around its swap)."""
    ids = [_floor_id(settings), _floor_id(settings, pending=True)]
    with backend_errors("reading sync state failed"):
        docs = await db[SYNC_STATE].find({"_id": {"$in": ids}}).to_list(None)
    found = {d["_id"]: d for d in docs}
    floor, pending = (_as_floor(found.get(i)) for i in ids)
    if pending is not None and (floor is None or pending.ts > floor.ts):
        return Floor(pending.ts, pending.index + PENDING, pending.model)
    return floor


async def settle_floor(
    db: Any, settings: Settings, serving: Callable[[], Awaitable[list[str]]]
) -> None:
    """Save a pending floor as the floor once ``serving()`` (the alias targets) has its index."""
    floor = await load_floor(db, settings)
    if floor is None or not floor.index.endswith(PENDING):
        return
    index = floor.index.removesuffix(PENDING)
    if index in await serving():
        await save_floor(db, settings, floor.ts, index, model=floor.model)


def _as_floor(doc: dict[str, Any] | None) -> Floor | None:
    ts = _utc(doc.get("ts")) if doc else None
    if not doc or not ts:
        return None
    model = doc.get("model")
    return Floor(ts, str(doc.get("index")), model if isinstance(model, str) else None)


async def save_floor(
    db: Any,
    settings: Settings,
    ts: datetime,
    index: str,
    *,
    pending: bool = False,
    model: str | None = None,
) -> None:
    fields = {"scope": scope(settings), "ts": ts, "index": index, "model": model}
    with backend_errors("saving sync state failed"):
        await db[SYNC_STATE].update_one(
            {"_id": _floor_id(settings, pending=pending)},
            {"$set": {**fields, "saved_at": now_ms()}},
            upsert=True,
        )


async def load_checkpoints(
    db: Any, settings: Settings, kind: str, partitions: list[int]
) -> dict[int, Checkpoint]:
    """The checkpoint of each partition (missing ones filled in as the docstring says)."""
    ids = {checkpoint_id(settings, kind, p): p for p in partitions}
    with backend_errors("reading sync state failed"):
        docs = await db[SYNC_STATE].find({"_id": {"$in": list(ids)}}).to_list(None)
    out = {
        ids[d["_id"]]: Checkpoint(
            ids[d["_id"]], _utc(d.get("ts")), d.get("token"), d.get("floor_index"), d.get("model")
        )
        for d in docs
    }
    missing = [p for p in partitions if p not in out]
    if missing:
        start = await _fallback(db, settings, kind)
        for p in missing:
            out[p] = Checkpoint(p, start.ts, start.token, start.floor_index, start.model)
    return out


async def _fallback(db: Any, settings: Settings, kind: str) -> Checkpoint:
    """A safe start for a partition that has no checkpoint: the latest of the safe ones.

    Safe: the floor (the last reindex caught up to it), the legacy single checkpoint, and the
    oldest checkpoint of another partition layout whose every partition has one — each lowered
    to the floor when it predates it. Checkpoints of this very layout are no evidence: another
    partition's progress says nothing about this one.
    """
    floor = await load_floor(db, settings)
    with backend_errors("reading sync state failed"):
        docs = await db[SYNC_STATE].find({"scope": scope(settings), "kind": kind}).to_list(None)
        legacy = await db[SYNC_STATE].find_one({"_id": state_key(settings, kind)})
    layouts: dict[int, list[dict[str, Any]]] = {}
    for d in docs:
        if d.get("of") != settings.sync_partitions:
            layouts.setdefault(int(d.get("of") or 0), []).append(d)
    candidates: list[list[dict[str, Any]]] = [
        group for of, group in layouts.items() if len({d.get("partition") for d in group}) == of
    ]
    if legacy:
        candidates.append([legacy])
    if kind != "change_stream":  # a watermark: polling, behaviour (and the model read)
        starts: list[tuple[datetime, str | None]] = []
        if floor is not None:
            starts.append((floor.ts, floor.model))
        for group in candidates:
            stamps = [(_effective(d, floor), d.get("model")) for d in group]
            dated = [(t, m) for t, m in stamps if t is not None]
            if len(dated) == len(stamps):
                starts.append(min(dated, key=lambda s: s[0]))
        ts, model = max(starts, key=lambda s: s[0]) if starts else (None, None)
        index = floor.index if floor is not None else None
        return Checkpoint(-1, ts=ts, floor_index=index, model=model)
    tokens = []
    for group in candidates:
        if all(d.get("token") is not None for d in group):
            tokens.append(min((d["token"] for d in group), key=token_order))
    return Checkpoint(-1, token=max(tokens, key=token_order) if tokens else None)


def token_order(token: Any) -> str:
    """Change-stream resume tokens order by their hex ``_data`` (cluster time first)."""
    return str(token.get("_data", "")) if isinstance(token, dict) else ""


def _effective(doc: dict[str, Any], floor: Floor | None) -> datetime | None:
    """A polling checkpoint's safe start: lowered to the floor unless it has replayed it."""
    ts = _utc(doc.get("ts"))
    if ts is None or floor is None or doc.get("floor_index") == floor.index:
        return ts
    return min(ts, floor.ts)


async def save_checkpoints(
    db: Any, settings: Settings, kind: str, checkpoints: list[Checkpoint], owner: str
) -> None:
    ops = []
    for cp in checkpoints:
        fields: dict[str, Any] = {
            "scope": scope(settings),
            "kind": kind,
            "mode": kind,
            "partition": cp.partition,
            "of": settings.sync_partitions,
            "floor_index": cp.floor_index,
            "owner": owner,
            "saved_at": now_ms(),
        }
        if kind != "change_stream":  # a watermark: polling, behaviour
            fields["ts"] = cp.ts
            if cp.model is not None:
                fields["model"] = cp.model
        else:
            fields["token"] = cp.token
        ops.append(
            UpdateOne(
                {"_id": checkpoint_id(settings, kind, cp.partition)}, {"$set": fields}, upsert=True
            )
        )
    if ops:
        await bulk_write_chunked(db[SYNC_STATE], ops)
