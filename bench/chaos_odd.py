"""Odd event payloads among ``bench/chaos.py``'s posts, and the checks of the events stored.

A client posts batches of valid events (fresh ids, members the judged viewers are not) with
one odd part: wrong types, unknown fields, huge strings, a lone surrogate escape, a time far
in the future or the past, an id with whitespace, 1001 events, an empty list, an id twice
in one batch, one id for two items. Judged: no 5xx but 503 with ``Retry-After``; a refused
batch is a 4xx and none of its events is ever stored; an accepted one rejects each odd event
with a reason (but an id repeated as itself: counted once; a time past the retention or
ahead of the clock is rejected, docs/api.md) and no valid one (but one about a profile
deleted before); its events accepted then join the truth (``Truth.batches``, judged once the
faults stop) like any other's.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from typing import Any

import httpx
from chaos_load import Truth, was_deleted

from opendisco.signals._given_up import UNAPPLIED

__all__ = ["ODD", "odd_loop", "stored_checks"]

ODD = ("wrong_type", "unknown_field", "huge_string", "surrogate", "ts_future", "ts_past",
       "id_whitespace", "too_many", "empty", "dup_id", "id_two_items")  # fmt: skip
#: odd parts an accepted batch may take as valid events
MAY_ACCEPT = {"dup_id"}


def _valid(rng: random.Random, truth: Truth, members: list[str], n: int) -> list[dict]:
    me = rng.choice(members)
    items = [i for i, d in truth.items.items() if d["owner_id"] != me]
    return [{"id": uuid.uuid4().hex, "type": rng.choice(("like", "pass", "impression")),
             "user_id": me, "item_id": rng.choice(items)} for _ in range(n)]  # fmt: skip


def odd_batch(rng: random.Random, truth: Truth, members: list[str]) -> tuple[str, bytes, list, set]:
    """(kind, body, events as posted, indices of the odd ones)."""
    kind = rng.choice(ODD)
    events = _valid(rng, truth, members, rng.randint(1, 3))
    odd = dict(_valid(rng, truth, members, 1)[0], user_id=events[0]["user_id"])
    raw: str | None = None
    if kind == "wrong_type":
        field = rng.choice(("id", "type", "user_id", "item_id", "ts"))  # (a ts may be null)
        odd[field] = rng.choice((7, ["x"], {"a": 1}, True, 1.5, *([None] * (field != "ts"))))
    elif kind == "unknown_field":
        odd["weight"] = 1e9
    elif kind == "huge_string":
        odd[rng.choice(("id", "item_id", "user_id", "type"))] = "x" * rng.choice((600, 70_000))
    elif kind == "surrogate":
        odd["id"] = "SURR"
        raw = "\\ud800" if rng.random() < 0.5 else "\\udc80x\\u0000"
    elif kind == "ts_future":
        odd["ts"] = rng.choice(("9999-12-31T23:59:59", "2300-01-01T00:00:00"))
    elif kind == "ts_past":
        odd["ts"] = rng.choice(("1970-01-01T00:00:00", "0001-01-01T00:00:00"))
    elif kind == "id_whitespace":
        odd["id"] = rng.choice((f" {odd['id']}", f"{odd['id']}\t", "a b"))
    elif kind == "dup_id":
        odd = dict(events[0])
    elif kind == "id_two_items":
        others = [i for i in truth.items if i != events[0]["item_id"]]
        odd = dict(events[0], item_id=rng.choice(others))
    posted = [*events, odd]
    if kind == "too_many":
        posted = events + _valid(rng, truth, members, 1001 - len(events))
    elif kind == "empty":
        posted = []
    rng.shuffle(posted)
    body = json.dumps({"events": posted})
    if raw is not None:
        body = body.replace('"SURR"', f'"{raw}"')
    odd_at = {i for i, e in enumerate(posted) if e is odd}
    return kind, body.encode(), posted, odd_at


async def _post(client: httpx.AsyncClient, truth: Truth, body: bytes, key: str, tries: int) -> Any:
    """Post until an answer settles it (not a 503 / 429, nothing in flight); None if never."""
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    last = ""
    for _ in range(tries):
        try:
            r = await client.post("/v1/events", content=body, headers=headers)
        except httpx.HTTPError as exc:
            truth.stats[last := f"odd_{type(exc).__name__}"] += 1
            await asyncio.sleep(0.3)
            continue
        if r.status_code in (429, 503) and r.headers.get("retry-after"):
            truth.stats[last := f"odd_{r.status_code}"] += 1
        elif r.status_code != 200 or r.json()["in_flight"] == 0:
            return r
        else:
            last = "odd_in_flight"
        await asyncio.sleep(min(1.0, float(r.headers.get("retry-after") or 0.3)))
    truth.stats["odd_unsettled"] += 1
    truth.stats[f"{last}_last"] += 1  # what a batch never settled was answered last
    return None


def _gone(truth: Truth, event: dict[str, Any], reason: str | None) -> bool:
    """Whether ``reason`` rejects ``event`` for its profile, deleted before."""
    return "unknown item" in (reason or "") and was_deleted(truth, event["item_id"])


def judge_odd(truth: Truth, kind: str, posted: list, odd_at: set, r: httpx.Response) -> None:
    """One odd batch's answer (module docstring); its events accepted join the truth."""
    ex = {"kind": kind, "status": r.status_code, "body": r.text[:300]}
    if r.status_code >= 500 or (r.status_code == 200 and kind in ("too_many", "empty")):
        truth.violate(f"odd_status_{r.status_code}", ex)
        return
    if r.status_code != 200:  # refused whole: none of its events may be stored, ever
        truth.stats[f"odd_{kind}_{r.status_code}"] += 1
        truth.never_stored.extend(e["id"] for e in posted if isinstance(e.get("id"), str))
        return
    rejected = {x["index"]: x.get("reason") for x in r.json()["rejected"]}
    truth.stats[f"odd_{kind}_200"] += 1
    if not all(rejected.values()):
        truth.violate("odd_rejected_no_reason", ex)
    odd_ids = [posted[j]["id"] for j in odd_at]
    pair = {i for i, e in enumerate(posted) if odd_ids and e.get("id") == odd_ids[0]}
    if kind == "id_two_items":  # one of the two, or none when one's profile was deleted
        gone = any(_gone(truth, posted[i], rejected.get(i)) for i in pair)
        if len(pair - set(rejected)) != 1 and not (gone and pair <= set(rejected)):
            truth.violate("odd_id_two_items", {**ex, "pair": sorted(pair)})
    elif kind not in MAY_ACCEPT and odd_at - set(rejected):
        truth.violate("odd_accepted", ex)
    accepted, seen = [], set()
    for i, e in enumerate(posted):
        if i in rejected:
            if i not in odd_at and not _gone(truth, e, rejected[i]) and kind != "id_two_items":
                truth.violate("odd_valid_rejected", {**ex, "event": e})
        elif e["id"] not in seen and (i not in odd_at or kind in MAY_ACCEPT | {"id_two_items"}):
            seen.add(e["id"])
            accepted.append(e)
    _join(truth, accepted, {"kind": kind, "answer": r.json()})


def _join(truth: Truth, accepted: list[dict[str, Any]], why: dict[str, Any]) -> None:
    now = time.monotonic()
    with truth.lock:
        if accepted:
            truth.batches.append(accepted)
        for e in accepted:
            truth.acked[e["id"]] = (now, {**e, **why})
            truth.mine[e["user_id"]].append((now, e["type"], e["item_id"]))


async def _one(
    client: httpx.AsyncClient, truth: Truth, key: str, odd: tuple, stop: asyncio.Event
) -> None:
    """One odd batch posted until settled (once the faults stop, if not before)."""
    kind, body, posted, odd_at = odd
    r = await _post(client, truth, body, key, 30)
    if r is None:  # perhaps stored in part: its answer once the faults stopped
        await stop.wait()
        r = await _post(client, truth, body, key, 60)
    if r is not None:
        judge_odd(truth, kind, posted, odd_at, r)
    else:  # never answered: what the store holds of it is its truth (rule 3's counts). Taken
        # as acknowledged, its events were counted lost when rejected or never stored, and one
        # id for two items posted again about the item the store did not hold (seed 34)
        truth.stats["odd_never_settled"] += 1
        truth.unsure.update(e["id"] for e in posted if isinstance(e.get("id"), str))


async def odd_loop(
    client: httpx.AsyncClient, truth: Truth, key: str, members: list[str], rng: random.Random,
    stop: asyncio.Event,
) -> None:  # fmt: skip
    """Post an odd batch every 0.2–1 s until ``stop`` (each retried beside the next ones)."""
    pending: set[asyncio.Future[None]] = set()
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        truth.stats["odd_posted"] += 1
        task = asyncio.ensure_future(_one(client, truth, key, odd_batch(rng, truth, members), stop))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


async def stored_checks(db: Any, truth: Truth, wait_s: float) -> dict[str, int]:
    """Once settled: no event of a refused batch stored; every stored event applied or
    ``dropped`` with a reason (none left unapplied with the recovery sweep stuck: waits up to
    ``wait_s`` for the sweeps to mark them)."""
    deadline, unapplied = time.monotonic() + wait_s, UNAPPLIED
    while time.monotonic() < deadline:
        if not await db["events"].count_documents(unapplied):
            break
        await asyncio.sleep(2)
    ids = truth.never_stored
    stored = [d["_id"] async for d in db["events"].find({"_id": {"$in": ids}}, {"_id": 1})]
    if stored:
        truth.violate("odd_refused_but_stored", {"n": len(stored), "ids": stored[:5]})
    stuck = [d async for d in db["events"].find(unapplied)]
    if stuck:
        ex = [{k: d.get(k) for k in ("_id", "type", "user_id", "item_id")} for d in stuck[:5]]
        truth.violate("events_unapplied_not_dropped", {"n": len(stuck), "examples": ex})
    dropped = await db["events"].count_documents({"dropped": {"$exists": True}})
    return {"never_stored": len(ids), "events_dropped": dropped, "events_stuck": len(stuck)}
