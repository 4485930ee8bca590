"""The load and the ground truth of ``bench/chaos.py``: clients asking for recommendations and
posting events (retries reuse the event ids), a MongoDB writer changing members, and the
judge of every answer against what was acknowledged before its request was sent.

Times are ``time.monotonic()`` of this process. A change is *settled* for a request when it
was acknowledged before the request was sent and no later change of the same document had
started before the answer came back (a change in flight is never judged).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

from opendisco._domain import USERS_COLLECTION
from opendisco._store import now_ms

__all__ = ["Truth", "client_loop", "post_batch", "writer_loop"]

#: invalid item documents the writer inserts (each must end in dead letters with a reason)
INVALID = (
    {"title": 42},
    {"exposure_cap": -5},
    {"popularity": float("nan")},
    {"tags": "not-a-list"},
    {"created_at": "yesterday"},
)
#: the mark of a document deleted from MongoDB (the truth keeps its last fields: its owner)
GONE = "_gone"


@dataclass
class Truth:
    """What was acknowledged when, and every violation seen (kind → count, examples)."""

    items: dict[str, dict[str, Any]]  # item id → its document as last written
    users: dict[str, dict[str, Any]]
    changes: dict[str, list[tuple[float, float, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # doc key ("i:p3", "u:u3") → (started, acknowledged, document after)
    acked: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)  # event id
    batches: list[list[dict[str, Any]]] = field(default_factory=list)  # every batch posted
    # (answer time, item id, the answer's caps unchecked: ``degraded_rules`` names them)
    served: list[tuple[float, str, bool]] = field(default_factory=list)
    invalid_ids: list[str] = field(default_factory=list)
    never_stored: list[str] = field(default_factory=list)  # event ids of batches refused (4xx)
    unsure: set[str] = field(default_factory=set)  # ids of batches never answered: the store's
    mine: dict[str, list[tuple[float, str, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # member → (acknowledged, type, item) of their events
    hides: list[tuple[float, str, str]] = field(default_factory=list)  # (acked, hider, owner)
    items_collection: str = "items"
    writing: set[str] = field(default_factory=set)  # doc keys of the writes in flight
    t0: float = field(default_factory=time.monotonic)  # examples' times are from here
    violations: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    stats: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def violate(self, kind: str, example: Any) -> None:
        with self.lock:
            self.violations[kind] += 1
            if len(self.examples[kind]) < 5:
                self.examples[kind].append(example)

    def as_of(self, key: str, sent: float, answered: float) -> dict[str, Any] | None:
        """The document ``key`` as acknowledged before ``sent``; None when a change of it was
        in flight during the request (not judged)."""
        with self.lock:
            history = list(self.changes.get(key, ()))
        doc = None
        for started, acked, after in history:
            if acked < sent:
                doc = after
            elif started < answered:
                return None
        if doc is None:
            base = self.items if key.startswith("i:") else self.users
            doc = base.get(key[2:])
        return doc


def eligible(viewer: dict[str, Any], item: dict[str, Any]) -> str | None:
    """Why ``item`` may not be shown to ``viewer`` (the documented hard rules, written here
    from the docs, not imported), or None. ``GONE``: the document was deleted from MongoDB."""
    if viewer.get(GONE):
        return "viewer_users_gone"
    if item.get(GONE):
        return "hard_deleted"
    if item.get("deleted"):
        return "deleted"
    if not item.get("available", True):
        return "unavailable"
    if viewer.get("gender") not in (item.get("pref_genders") or ()):
        return "preference"
    if item.get("gender") not in (viewer.get("pref_genders") or ()):
        return "preference"
    for age, other in ((item.get("age"), viewer), (viewer.get("age"), item)):
        lo, hi = other.get("pref_age_min"), other.get("pref_age_max")
        if age is None or (lo is not None and age < lo) or (hi is not None and age > hi):
            return "preference"
    return None


def judge(truth: Truth, viewer_id: str, sent: float, answered: float, body: dict) -> None:
    """Every item of a 200 answer against the ground truth (rule 1)."""
    owner_of = {i: d["owner_id"] for i, d in truth.items.items()}
    me = viewer_id
    with truth.lock:
        mine = {(k, i) for t, k, i in truth.mine[me] if t < sent}
        blocked = {o for t, u, o in truth.hides if t < sent and u == me}
        blockers = {u for t, u, o in truth.hides if t < sent and o == me}
    viewer = truth.as_of(f"u:{me}", sent, answered)
    for row in body["items"]:
        iid = row["id"]
        truth.served.append((answered, iid, "exposure_cap" in body["degraded_rules"]))
        owner = owner_of.get(iid)
        ex = {
            "viewer": me,
            "item": iid,
            "degraded": body["degraded"],
            "t": round(sent - truth.t0, 2),
        }
        if iid not in truth.items:
            truth.violate("unknown_or_dead_lettered_item", ex)
            continue
        if owner == me:
            truth.violate("own_profile", ex)
        if owner in blocked or owner in blockers:
            truth.violate("blocked", ex)
        for kind in ("like", "hide", "pass", "impression"):
            if (kind, iid) in mine:
                truth.violate(f"already_{kind}", ex)
        item = truth.as_of(f"i:{iid}", sent, answered)
        if item is None or viewer is None:
            truth.stats["not_judged_in_flight"] += 1
            continue
        why = eligible(viewer, item)
        if why:
            truth.violate(why, {**ex, "item_doc": {k: item.get(k) for k in _SHOWN}})


_SHOWN = ("available", "deleted", "gender", "age", "pref_genders", "pref_age_min", "pref_age_max")


def status_ok(truth: Truth, what: str, r: httpx.Response) -> bool:
    """Rule 2: no 5xx but 503 with Retry-After, no 4xx for valid input but 429 with it."""
    if r.status_code == 200:
        return True
    if r.status_code in (429, 503) and r.headers.get("retry-after"):
        try:
            why = str(r.json()["error"].get("type"))
        except (ValueError, KeyError, AttributeError):
            why = "?"
        truth.stats[f"{what}_{r.status_code}"] += 1
        truth.stats[f"{what}_{r.status_code}_{why}"] += 1
        return False
    truth.violate(f"status_{r.status_code}", {"what": what, "body": r.text[:300]})
    return False


def was_deleted(truth: Truth, iid: str) -> bool:
    """Whether the profile ``iid`` was deleted (soft or hard) by a write started so far."""
    with truth.lock:
        docs = [d for _, _, d in truth.changes.get(f"i:{iid}", ())] + [truth.items[iid]]
    return f"i:{iid}" in truth.writing or any(d.get("deleted") or d.get(GONE) for d in docs)


def _rejected(truth: Truth, batch: list[dict[str, Any]], rejected: list[dict]) -> set[str]:
    """The ids of ``batch`` an answer rejected; only an event about a profile deleted before
    may be (ingest's rule: MongoDB no longer holds it as an item): any other is rule 2."""
    out = set()
    for r in rejected:
        e = batch[r["index"]]
        out.add(e["id"])
        if "unknown item" in r["reason"] and was_deleted(truth, e["item_id"]):
            truth.stats["events_rejected_deleted_item"] += 1
        else:
            truth.violate("event_rejected", {"event": e, "reason": r["reason"]})
    return out


async def post_batch(
    client: httpx.AsyncClient, truth: Truth, batch: list[dict[str, Any]], key: str, tries: int
) -> bool:
    """Post ``batch`` as a retrying client (same ids each time) until an answer settles it; the
    events acknowledged then. False if it was never settled in ``tries``."""
    for _ in range(tries):
        try:
            r = await client.post("/v1/events", json={"events": batch}, headers={"X-API-Key": key})
        except httpx.HTTPError as exc:
            truth.stats[f"events_{type(exc).__name__}"] += 1
            await asyncio.sleep(0.3)
            continue
        if status_ok(truth, "events", r):
            body = r.json()
            gone = _rejected(truth, batch, body["rejected"])
            if body["in_flight"] == 0:
                now = time.monotonic()
                with truth.lock:
                    for e in batch:
                        if e["id"] in truth.acked or e["id"] in gone:
                            continue
                        truth.stats["events_acked"] += 1
                        truth.acked[e["id"]] = (now, {**e, "answer": body})
                        truth.mine[e["user_id"]].append((now, e["type"], e["item_id"]))
                        if e["type"] == "hide":
                            owner = truth.items[e["item_id"]]["owner_id"]
                            truth.hides.append((now, e["user_id"], owner))
                return True
        await asyncio.sleep(min(1.0, float(r.headers.get("retry-after") or 0.3)))
    truth.stats["events_unsettled"] += 1
    return False


async def client_loop(
    client: httpx.AsyncClient, truth: Truth, key: str, viewers: list[str], rng: random.Random,
    stop: asyncio.Event,
) -> None:  # fmt: skip
    """Ask for a member's page; now and then like / hide / pass some of it (with impressions),
    posting each batch once or twice at once (a client's concurrent retry)."""
    pending: set[asyncio.Future[bool]] = set()
    while not stop.is_set():
        me = rng.choice(viewers)
        sent = time.monotonic()
        truth.stats["recs_sent"] += 1
        try:
            r = await client.get(f"/v1/users/{me}/recommendations?k=10", headers={"X-API-Key": key})
        except httpx.HTTPError as exc:
            truth.stats[f"recs_{type(exc).__name__}"] += 1
            if isinstance(exc, httpx.TimeoutException):
                truth.violate("recs_timeout", {"viewer": me, "t": round(sent - truth.t0, 2)})
            await asyncio.sleep(0.2)
            continue
        answered = time.monotonic()
        if not status_ok(truth, "recs", r):
            await asyncio.sleep(0.2)
            continue
        body = r.json()
        truth.stats["recs_200"] += 1
        truth.stats["recs_degraded"] += bool(body["degraded"])
        judge(truth, me, sent, answered, body)
        shown = [row["id"] for row in body["items"]]
        if not shown or rng.random() < 0.4:
            continue
        kinds = ["impression"] * len(shown)
        picks = list(shown)
        for kind in ("like", "hide", "pass"):
            if rng.random() < 0.5:
                kinds.append(kind)
                picks.append(rng.choice(shown))
        batch = [
            {"id": uuid.uuid4().hex, "type": k, "user_id": me, "item_id": i}
            for k, i in zip(kinds, picks, strict=True)
        ]
        truth.batches.append(batch)
        truth.stats["events_posted"] += len(batch)
        copies = 2 if rng.random() < 0.3 else 1
        for _ in range(copies):  # posted beside the next pages, as a client's own tasks
            task = asyncio.ensure_future(post_batch(client, truth, batch, key, 30))
            pending.add(task)
            task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


def _write(truth: Truth, db: Any, kind: str, doc_id: str, change: dict[str, Any] | None) -> None:
    """One write of the document ``kind:doc_id``: ``change`` set (an item's version + 1), or
    with ``None`` the document deleted (``delete_one``), or written again when it was gone (an
    item at 2 past its last version: past the delete sync wrote at one past the index's)."""
    coll = db[truth.items_collection] if kind == "i" else db[USERS_COLLECTION]
    base = truth.items if kind == "i" else truth.users
    started, last = time.monotonic(), base[doc_id]
    with truth.lock:
        truth.writing.add(f"{kind}:{doc_id}")
    try:
        if change is None:
            coll.delete_one({"_id": doc_id})
            after = {**last, GONE: True}
        elif last.get(GONE):
            after = {k: v for k, v in {**last, **change}.items() if k != GONE}
            if kind == "i":
                after.update(version=int(after.get("version") or 1) + 2, updated_at=now_ms())
            coll.insert_one(dict(after))
        else:
            update: dict[str, Any] = {"$set": change}
            if kind == "i":
                update = {"$set": {**change, "updated_at": now_ms()}, "$inc": {"version": 1}}
            coll.update_one({"_id": doc_id}, update)
            after = {**last, **change}
            if kind == "i":
                after["version"] = int(last.get("version") or 1) + 1
    except Exception:  # applied or not: the document as read again is the truth from now
        truth.stats["writes_unacknowledged"] += 1
        after = None
        while after is None:
            try:
                after = coll.find_one({"_id": doc_id}) or {**last, GONE: True}
            except Exception:
                time.sleep(0.5)
    acked = time.monotonic()
    with truth.lock:
        base[doc_id] = after
        truth.changes[f"{kind}:{doc_id}"].append((started, acked, dict(after)))
        truth.writing.discard(f"{kind}:{doc_id}")


def writer_loop(truth: Truth, db: Any, rng: random.Random, stop: threading.Event) -> None:
    """Availability flips, preference edits (the profile and its user together, as one
    member's edit), soft deletes, hard deletes (profiles, members' ``users``) and their
    documents written again, and now and then an invalid item document."""
    ids = sorted(truth.items)
    n_bad = 0
    while not stop.wait(rng.uniform(0.1, 0.5)):
        pid = rng.choice(ids)
        uid = truth.items[pid]["owner_id"]
        roll = rng.random()
        try:
            if roll < 0.5:
                _write(truth, db, "i", pid, {"available": not truth.items[pid]["available"]})
                truth.stats["writes_availability"] += 1
            elif roll < 0.85:
                lo = rng.randint(18, 50)
                prefs = {
                    "pref_genders": rng.sample(["f", "m", "nb"], rng.randint(1, 3)),
                    "pref_age_min": lo,
                    "pref_age_max": lo + rng.randint(5, 30),
                }
                _write(truth, db, "u", uid, prefs)  # the viewer side first ...
                _write(truth, db, "i", pid, prefs)  # ... then the profile the others see
                truth.stats["writes_preferences"] += 1
            elif roll < 0.9:
                _write(truth, db, "i", pid, {"deleted": True})
                truth.stats["writes_deletes"] += 1
            elif roll < 0.95:  # a hard delete (profile or member), or one gone written again
                hard_write(truth, db, rng, pid, uid)
            else:
                base = {k: v for k, v in truth.items[ids[0]].items() if k not in ("deleted", GONE)}
                bad = {**base, **rng.choice(INVALID)}  # not a deletion: one sync must letter
                bad.update(_id=f"bad{n_bad}", owner_id=f"ubad{n_bad}", version=1)
                bad["updated_at"] = now_ms()
                db[truth.items_collection].insert_one(bad)
                truth.invalid_ids.append(bad["_id"])
                n_bad += 1
                truth.stats["writes_invalid"] += 1
        except Exception as exc:  # the shared store busy: the next write tries again
            truth.stats[f"writer_{type(exc).__name__}"] += 1


def hard_write(truth: Truth, db: Any, rng: random.Random, pid: str, uid: str) -> None:
    """Half the time a profile or a member's ``users`` document deleted from MongoDB, else
    one of those gone written again (the profile not deleted, at a higher version)."""
    gone = [("i", i) for i, d in truth.items.items() if d.get(GONE)]
    gone += [("u", u) for u, d in truth.users.items() if d.get(GONE)]
    if gone and rng.random() < 0.5:
        kind, doc_id = rng.choice(sorted(gone))
        _write(truth, db, kind, doc_id, {"deleted": False} if kind == "i" else {})
        truth.stats[f"writes_recreate_{'profile' if kind == 'i' else 'user'}"] += 1
    elif rng.random() < 0.6:
        _write(truth, db, "i", pid, None)
        truth.stats["writes_hard_delete_profile"] += 1
    else:
        _write(truth, db, "u", uid, None)
        truth.stats["writes_hard_delete_user"] += 1


def cap_overruns(
    truth: Truth, caps: dict[str, int], slack_s: float, faults: list[tuple[float, float]]
) -> None:
    """Rule 1's caps: an item served after its cap was reached, later than ``slack_s`` (one
    flush and one read of the counters, the documented slack across processes). Every serve
    counts toward the cap; a serve is judged unless its answer named the caps unchecked
    (``degraded_rules``) or an engine fault or a worker's kill (``faults``: start, end) falls
    between the cap's reach and it (a flush failing, a killed worker's journal not yet adopted:
    the documented slack grows by what it kept)."""
    times: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for t, iid, unchecked in sorted(truth.served):
        times[iid].append((t, unchecked))
    for iid, ts in times.items():
        cap = caps.get(iid)
        if cap is None or len(ts) <= cap:
            continue
        reached = ts[cap - 1][0]
        past = [t for t, unchecked in ts[cap:] if not unchecked]
        truth.stats["cap_serves_past_cap"] += len(past)  # within the slack too: measured
        late = [t for t, unchecked in ts[cap:] if t > reached + slack_s and not unchecked]
        judged = [t for t in late if not any(a < t and b > reached - slack_s for a, b in faults)]
        truth.stats["cap_overruns_in_fault_windows"] += len(late) - len(judged)
        if judged:
            ex = {"item": iid, "cap": cap, "served": len(ts), "late": len(judged),
                  "reached": round(reached - truth.t0, 1),
                  "late_at": [round(t - truth.t0, 1) for t in judged[:5]]}  # fmt: skip
            truth.violate("exposure_cap", ex)
