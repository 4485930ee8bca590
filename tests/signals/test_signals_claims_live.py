"""Event claims against the real servers: concurrent duplicates count once, crashed claims are
recovered once, live claims are never taken over (issue 19, item 1)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import combinations
from typing import Any

import numpy as np
import pytest
from signals_support import clustered_namespace

from opendisco import SearchBackendError, Settings, clients
from opendisco.api import create_app
from opendisco.signals import (
    EVENTS,
    BlockStore,
    EventProcessor,
    EventsResult,
    ExposureStore,
    InboundCounter,
    ItemGraph,
    UserStateStore,
    as_served,
)

MOVIES = [f"{c}{j}" for c in ("alpha", "beta", "gamma") for j in range(3, 9)]
PROFILES = ["prof0", "prof1", "prof2", "prof3"]


# the clustered catalogue in a namespace of its own: these tests count every counter of the
# items they touch, and add edges and impressions other suites' absolute checks must not see


@pytest.fixture(scope="module")
def claims_settings(
    settings: Settings, os_client: Any, index_items: Any, clustered_items: list[dict[str, Any]]
) -> Any:
    with clustered_namespace(settings, os_client, index_items, clustered_items, "cl") as s:
        yield s


@pytest.fixture
async def claims_db(claims_settings: Settings) -> Any:
    client = clients.mongo_async(claims_settings)
    yield client[claims_settings.mongo_db]
    await client.close()


@pytest.fixture
async def claims_os(claims_settings: Settings) -> Any:
    client = clients.async_opensearch(claims_settings)
    yield client
    await client.close()


def _batch(rng_seed: int, n_users: int = 6) -> list[dict[str, Any]]:
    """30 events from fresh members: impressions, movie likes/clicks (graph edges) and profile
    likes (inbound attention, mutual likes); at most 3 positives per member."""
    tag = uuid.uuid4().hex[:6]
    out: list[dict[str, Any]] = []
    for u in range(n_users):
        user = f"c{tag}{u}"
        picks = [MOVIES[(rng_seed * 5 + u * 7 + j * 4) % len(MOVIES)] for j in range(4)]
        out += [
            {"type": "impression", "item_id": picks[0]},
            {"type": "impression", "item_id": picks[1]},
            {"type": "like", "item_id": picks[2]},
            {"type": "click", "item_id": picks[3]},
            {"type": "like", "item_id": PROFILES[(u + rng_seed) % 4]},
        ]
        for e in out[-5:]:
            e.update(id=uuid.uuid4().hex, user_id=user)
    return out


def _expected(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """What applying ``batch`` once adds: impressions, inbound likes, co-engagement pairs."""
    pos: dict[str, list[str]] = {}
    for e in batch:
        if e["type"] in ("like", "click"):
            pos.setdefault(e["user_id"], []).append(e["item_id"])
    edges: Counter[tuple[str, str]] = Counter()
    for items in pos.values():
        for a, b in combinations(dict.fromkeys(items), 2):
            edges[(a, b)] += 1
            edges[(b, a)] += 1
    return {
        "exposure": Counter(e["item_id"] for e in batch if e["type"] == "impression"),
        "inbound": Counter(
            e["item_id"] for e in batch if e["type"] == "like" and e["item_id"] in PROFILES
        ),
        "edges": edges,
        "positives": pos,
    }


class _Counters:
    """Reads of every counter a batch touches (exposure, inbound, graph weights)."""

    def __init__(self, proc: EventProcessor, db: Any) -> None:
        self.proc = proc
        self.graph = ItemGraph(db)
        self.inbound = InboundCounter(db)

    async def read(self) -> dict[str, Any]:
        expo = await self.proc.exposure.counts([*MOVIES, *PROFILES])
        inbound = await self.inbound.counts(PROFILES)
        edges = {}
        for src in [*MOVIES, *PROFILES]:
            for dst, w in (await self.graph.weights([src])).items():
                edges[(src, dst)] = w
        return {"exposure": expo, "inbound": inbound, "edges": edges}

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Counter[Any]]:
        out: dict[str, Counter[Any]] = {}
        for key in a:
            d: Counter[Any] = Counter()
            for k in set(a[key]) | set(b[key]):
                diff = b[key].get(k, 0) - a[key].get(k, 0)
                if diff:
                    d[k] = diff
            out[key] = d
        return out


async def _assert_exact(
    db: Any, batch: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any]
) -> None:
    want = _expected(batch)
    got = _Counters.delta(before, after)
    assert got["exposure"] == want["exposure"]
    assert got["inbound"] == want["inbound"]
    assert got["edges"] == want["edges"]
    states = await UserStateStore(db).get_many(want["positives"])
    for user, items in want["positives"].items():
        st = states[user]
        assert sorted(p["id"] for p in st.positives) == sorted(items)
        assert len(st.applied) == len(set(st.applied)) == 5  # every event merged once
    ids = [e["id"] for e in batch]
    stored = await db[EVENTS].find({"_id": {"$in": ids}}).to_list(None)
    assert len(stored) == len(batch) and all(d["applied"] for d in stored)


def _waits(settings: Settings, *, wait: float = 30.0, lease: float = 30.0) -> Settings:
    """Claims settings for a test: a loaded machine applies a batch in seconds, so callers
    wait long enough for the holder unless the test says otherwise."""
    return settings.model_copy(update={"events_claim_wait_s": wait, "events_claim_lease_s": lease})


def _sums(results: list[EventsResult]) -> tuple[int, int, int, int]:
    return (
        sum(r.accepted for r in results),
        sum(r.duplicates for r in results),
        sum(r.recovered for r in results),
        sum(r.in_flight for r in results),
    )


async def test_concurrent_posts_of_one_batch_count_once(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    # three processors = three API workers receiving a client's batch and its two retries
    s = _waits(claims_settings)
    procs = [EventProcessor(s, claims_db, claims_os) for _ in range(3)]
    counters = _Counters(procs[0], claims_db)
    for rnd in range(5):
        batch = _batch(rnd)
        assert len(batch) == 30
        before = await counters.read()
        results = await asyncio.gather(*(p.apply(batch) for p in procs))
        assert _sums(list(results)) == (30, 60, 0, 0), [r.to_dict() for r in results]
        assert all(not r.rejected for r in results)
        await _assert_exact(claims_db, batch, before, await counters.read())


async def test_concurrent_posts_within_one_processor_count_once(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    proc = EventProcessor(_waits(claims_settings), claims_db, claims_os)
    counters = _Counters(proc, claims_db)
    batch = _batch(7)
    before = await counters.read()
    results = await asyncio.gather(*(proc.apply(batch) for _ in range(3)))
    assert _sums(list(results)) == (30, 60, 0, 0)
    await _assert_exact(claims_db, batch, before, await counters.read())


async def _leave_claims(
    db: Any, batch: list[dict[str, Any]], *, owner: str, expires: datetime
) -> None:
    """What a call that claimed ``batch`` and then stopped (crash, lost process) leaves."""
    now = datetime.now(UTC)
    await db[EVENTS].insert_many(
        [
            {
                **{k: v for k, v in e.items() if k != "id"},
                "_id": e["id"],
                "ts": now,
                "received_at": now,
                "applied": False,
                "claim_owner": owner,
                "claim_gen": 0,
                "claim_expires": expires,
            }
            for e in batch
        ]
    )


async def test_crashed_claim_is_recovered_exactly_once(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    s = _waits(claims_settings)
    procs = [EventProcessor(s, claims_db, claims_os) for _ in range(3)]
    counters = _Counters(procs[0], claims_db)
    batch = _batch(11)
    before = await counters.read()
    await _leave_claims(
        claims_db, batch, owner="dead", expires=datetime.now(UTC) - timedelta(seconds=1)
    )
    results = await asyncio.gather(*(p.apply(batch) for p in procs))
    assert _sums(list(results)) == (0, 60, 30, 0), [r.to_dict() for r in results]
    await _assert_exact(claims_db, batch, before, await counters.read())
    again = await procs[0].apply(batch)
    assert (again.accepted, again.duplicates, again.recovered) == (0, 30, 0)


async def test_live_claim_is_not_taken_over(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    proc = EventProcessor(_waits(claims_settings, wait=0.3), claims_db, claims_os)
    counters = _Counters(proc, claims_db)
    batch = _batch(13)
    before = await counters.read()
    await _leave_claims(
        claims_db, batch, owner="alive", expires=datetime.now(UTC) + timedelta(seconds=60)
    )
    res = await proc.apply(batch)
    assert (res.accepted, res.duplicates, res.recovered, res.in_flight) == (0, 0, 0, 30)
    assert _Counters.delta(before, await counters.read()) == {
        "exposure": Counter(),
        "inbound": Counter(),
        "edges": Counter(),
    }
    # the holder finishes: a retry now reports duplicates
    ids = [e["id"] for e in batch]
    await claims_db[EVENTS].update_many({"_id": {"$in": ids}}, {"$set": {"applied": True}})
    res = await proc.apply(batch)
    assert (res.accepted, res.duplicates, res.in_flight) == (0, 30, 0)


async def test_claim_expiring_while_waited_for_is_recovered(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    s = _waits(claims_settings)
    procs = [EventProcessor(s, claims_db, claims_os) for _ in range(2)]
    counters = _Counters(procs[0], claims_db)
    batch = _batch(17)
    before = await counters.read()
    await _leave_claims(
        claims_db, batch, owner="dying", expires=datetime.now(UTC) + timedelta(seconds=0.5)
    )
    results = await asyncio.gather(*(p.apply(batch) for p in procs))
    assert _sums(list(results)) == (0, 30, 30, 0), [r.to_dict() for r in results]
    await _assert_exact(claims_db, batch, before, await counters.read())


class _SlowExposure(ExposureStore):
    """The real exposure store, taking ``delay_s`` longer per write (a slow holder);
    ``entered`` is set once a write has begun (its caller holds its claims by then)."""

    delay_s = 8.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = asyncio.Event()

    async def record(self, counts: Any, now: datetime | None = None, **kw: Any) -> list[str]:
        self.entered.set()
        await asyncio.sleep(self.delay_s)
        return await super().record(counts, now=now, **kw)


async def test_slow_holder_renews_its_claims(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    # lease 3 s, a holder that takes > 8 s: renewal keeps its claims; the retry waits and
    # reports duplicates, nothing is applied twice (a loaded machine stalls the loop for ~1 s
    # and FerretDB writes for as long, so the lease keeps a margin of two renewals)
    s = _waits(claims_settings, lease=3.0)
    exposure = _SlowExposure(claims_os, s)
    slow = EventProcessor(s, claims_db, claims_os, exposure=exposure)
    fast = EventProcessor(s, claims_db, claims_os)
    counters = _Counters(fast, claims_db)
    batch = _batch(19)
    before = await counters.read()
    first = asyncio.ensure_future(slow.apply(batch))
    # the slow call holds every claim once its effects have begun (claims are inserted
    # before any effect; a fixed pause raced the reads and the claim insert on a busy store)
    await asyncio.wait_for(exposure.entered.wait(), 60)
    second = await fast.apply(batch)
    res = await first
    assert (res.accepted, second.duplicates, second.recovered) == (30, 30, 0)
    await _assert_exact(claims_db, batch, before, await counters.read())


async def test_recovery_sweep_applies_events_nobody_retried(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    proc = EventProcessor(claims_settings, claims_db, claims_os)
    counters = _Counters(proc, claims_db)
    batch = _batch(23)
    await proc.ensure()
    await proc.recover_expired()  # whatever an earlier failed test left behind
    before = await counters.read()
    await _leave_claims(
        claims_db, batch, owner="dead", expires=datetime.now(UTC) - timedelta(seconds=1)
    )
    res = await proc.recover_expired()
    assert res.recovered == 30 and not res.rejected
    await _assert_exact(claims_db, batch, before, await counters.read())
    assert (await proc.recover_expired()).recovered == 0


class _BrokenExposure(ExposureStore):
    """The real exposure store whose counter writes fail (an engine outage mid-apply)."""

    async def record(self, counts: Any, now: datetime | None = None, **kw: Any) -> list[str]:
        raise SearchBackendError("exposure counters unavailable")


async def test_a_failed_apply_gives_its_claims_up_at_once(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    s = _waits(claims_settings, wait=0.5, lease=300.0)  # a lease no retry would outwait
    broken = EventProcessor(s, claims_db, claims_os, exposure=_BrokenExposure(claims_os, s))
    batch = _batch(29)
    before = await _Counters(broken, claims_db).read()
    with pytest.raises(SearchBackendError):
        await broken.apply(batch)
    proc = EventProcessor(s, claims_db, claims_os)
    res = await proc.apply(batch)
    # taken over at once (not in flight for the 300 s lease) and applied exactly once: the
    # graph weights and inbound counts the failed call had written are not added again
    assert (res.accepted, res.recovered, res.in_flight) == (0, 30, 0)
    await _assert_exact(claims_db, batch, before, await _Counters(proc, claims_db).read())


#: a process that claims a batch and hangs before any effect (to be killed with -9 there)
_CLAIM_THEN_HANG = """
import asyncio, json, sys
from opendisco import Settings, clients
from opendisco.signals import EventProcessor

async def main():
    s = Settings().model_copy(update=json.loads(sys.argv[1]))
    proc = EventProcessor(s, clients.mongo_async(s)[s.mongo_db], clients.async_opensearch(s))

    async def hang(*args, **kwargs):
        print("claimed", flush=True)
        await asyncio.sleep(3600)

    proc.writer.apply = hang
    await proc.apply(json.loads(sys.argv[2]))

asyncio.run(main())
"""


#: a process that applies a batch's effects and hangs before marking it applied (step 5)
_APPLY_THEN_HANG = _CLAIM_THEN_HANG.replace("proc.writer.apply = hang", "proc.claims.mark = hang")


async def _claimed_then_killed_9(
    s: Settings, batch: list[dict[str, Any]], script: str = _CLAIM_THEN_HANG
) -> None:
    """A process claims ``batch`` and is killed with -9 where ``script`` hangs (before any
    effect, by default)."""
    fields = {k: getattr(s, k) for k in ("opensearch_url", "mongo_url", "mongo_db", "index_alias")}
    child = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(fields), json.dumps(batch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert (await asyncio.to_thread(child.stdout.readline)).strip() == "claimed"
    finally:
        child.kill()
        child.wait()


def _with_hide(batch: list[dict[str, Any]]) -> str:
    hider = f"h{uuid.uuid4().hex[:8]}"
    batch.append({"id": uuid.uuid4().hex, "type": "hide", "user_id": hider, "item_id": "prof3"})
    return hider


async def test_a_claim_of_a_process_killed_9_is_applied_by_the_next_retry(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    """A call killed with -9 between its claim and its effects left the claim live for the
    whole lease (30 s): a retry after the restart reported the batch in flight and a hide
    among it was no block yet. Its holder is known gone now: the retry applies it, once."""
    s = _waits(claims_settings, wait=0.3)
    proc = EventProcessor(s, claims_db, claims_os)
    counters = _Counters(proc, claims_db)
    batch = _batch(17)
    hider = _with_hide(batch)
    before = await counters.read()
    await _claimed_then_killed_9(s, batch)
    res = await proc.apply(batch)
    assert (res.accepted, res.duplicates, res.recovered, res.in_flight) == (0, 0, 31, 0)
    await _assert_exact(claims_db, batch, before, await counters.read())
    assert (await BlockStore(claims_db).get(hider)).blocked == ("person3",)
    again = await proc.apply(batch)
    assert (again.accepted, again.duplicates, again.recovered) == (0, 31, 0)


async def test_a_process_killed_9_after_its_effects_is_not_counted_twice(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    """Killed with -9 after writing the counters and graph weights, before marking the events
    applied: the retry that took them over added them all again (the completed effects were
    recorded only when a failing call gave its claims up). Each is recorded as it is written
    now: the retry applies the batch, and counts it once."""
    s = _waits(claims_settings, wait=0.3)
    proc = EventProcessor(s, claims_db, claims_os)
    counters = _Counters(proc, claims_db)
    batch = _batch(37)
    before = await counters.read()
    await _claimed_then_killed_9(s, batch, _APPLY_THEN_HANG)
    res = await proc.apply(batch)
    assert (res.accepted, res.duplicates, res.recovered, res.in_flight) == (0, 0, 30, 0)
    await _assert_exact(claims_db, batch, before, await counters.read())


async def test_a_claim_of_a_process_killed_9_is_applied_by_the_next_api_process_unasked(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    """Killed with -9 between claim and effects, and no client retries: the events waited for
    the first events call one recovery cadence (300 s) after a restart. An API process runs
    the sweep in the background from start (first after 5 s, or one cadence: 0.5 s here) and
    applies the batch once, without being asked."""
    s = _waits(claims_settings, wait=0.3).model_copy(update={"events_recover_every_s": 0.5})
    counters = _Counters(EventProcessor(s, claims_db, claims_os), claims_db)
    batch = _batch(31)
    hider = _with_hide(batch)
    ids = [e["id"] for e in batch]
    before = await counters.read()
    await _claimed_then_killed_9(s, batch)
    app = create_app(s)
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            docs = await claims_db[EVENTS].find({"_id": {"$in": ids}}).to_list(None)
            if all(d.get("applied") for d in docs):
                break
            await asyncio.sleep(0.2)
    await _assert_exact(claims_db, batch, before, await counters.read())
    assert (await BlockStore(claims_db).get(hider)).blocked == ("person3",)


async def test_likes_applied_without_vectors_are_repaired_by_the_sweep(
    claims_settings: Settings,
    claims_db: Any,
    claims_os: Any,
    clustered_items: list[dict[str, Any]],
) -> None:
    """Likes applied while the engine's item lookup outlasts its bound are merged without the
    items' vectors: the member kept their old vectors until their next event, however long
    that took. The state is marked stale; the recovery sweep leaves it while the engine still
    cannot be read, then recomputes it: the vectors an apply with the engine up gives."""
    hurried = claims_settings.model_copy(update={"events_engine_timeout_s": 1e-4})
    blind = EventProcessor(hurried, claims_db, claims_os)
    normal = EventProcessor(claims_settings, claims_db, claims_os)
    states = UserStateStore(claims_db)
    tag = uuid.uuid4().hex[:8]
    ts = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()

    def likes(user: str) -> list[dict[str, Any]]:
        return [
            {"id": uuid.uuid4().hex, "type": t, "user_id": user, "item_id": MOVIES[j], "ts": ts}
            for t, j in (("like", 0), ("like", 7), ("click", 13), ("pass", 4))
        ]

    # MongoDB's copies of the items: what an apply reads when the engine cannot be
    for j in (0, 7, 13, 4):
        doc = next(d for d in clustered_items if d["id"] == MOVIES[j])
        await claims_db[claims_settings.items_collection].replace_one(
            {"_id": doc["id"]}, {k: v for k, v in doc.items() if k != "id"}, upsert=True
        )
    stale, control = f"rs{tag}", f"rc{tag}"
    assert (await blind.apply(likes(stale))).accepted == 4
    assert (await normal.apply(likes(control))).accepted == 4
    before = await states.get(stale)
    assert before.vectors_stale and before.vector is None and len(before.positives) == 3
    assert stale in await states.stale_vectors(10_000)
    assert await blind.repair_vectors(limit=10_000) == 0  # the engine still cannot be read
    assert (await states.get(stale)).vectors_stale
    assert await normal.repair_vectors(limit=10_000) >= 1
    got, want = await states.get(stale), await states.get(control)
    assert not got.vectors_stale and stale not in await states.stale_vectors(10_000)
    assert got.vector is not None and want.vector is not None
    np.testing.assert_allclose(got.vector, want.vector, rtol=1e-6, atol=1e-7)
    assert (got.behaviour is None) == (want.behaviour is None)
    if got.behaviour is not None:
        np.testing.assert_allclose(got.behaviour, want.behaviour, rtol=1e-6, atol=1e-7)
    assert [p["id"] for p in got.positives] == [p["id"] for p in before.positives]


async def test_a_new_behaviour_model_is_folded_into_members_and_no_other_is_searched_with(
    claims_settings: Settings, claims_os: Any
) -> None:
    """Two ALS models' latent axes mean nothing to each other. After ``train`` published a
    new model, every member kept the behaviour vector folded from the one before, and
    requests searched the new model's item vectors with it until the member's next event
    (however long that took). Now the state names the model it was folded from: serving
    leaves a vector of another model out (the member context), the recovery sweep folds the
    member again, and an event after the switch names the new model."""
    from opendisco._published import Followed, Generations, behaviour_models
    from opendisco.ingest import publish_behaviour
    from opendisco.serving import CandidatePlan, MemberContext

    s = claims_settings.model_copy(update={"mongo_db": f"{claims_settings.mongo_db}bm"})
    client = clients.mongo_async(s)
    db = client[s.mongo_db]
    try:
        proc = EventProcessor(s, db, claims_os)
        states = UserStateStore(db)
        ts = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        tag = uuid.uuid4().hex[:6]

        def likes(user: str, movies: list[str]) -> list[dict[str, Any]]:
            return [
                {"id": uuid.uuid4().hex, "type": "like", "user_id": user, "item_id": m, "ts": ts}
                for m in movies
            ]

        member, later = f"bm{tag}", f"bl{tag}"
        assert (await proc.apply(likes(member, MOVIES[:3]))).accepted == 3
        before = await states.get(member)
        assert before.behaviour is not None and before.behaviour_model is None
        assert member not in await states.stale_vectors(100, None)  # nothing to fold yet

        rng = np.random.default_rng(5)
        vectors = {m: rng.normal(size=s.behaviour_dim).tolist() for m in MOVIES}
        published = await publish_behaviour(db, s, vectors)  # what `opendisco train als` does
        member_ctx = MemberContext(
            db, states, BlockStore(db), behaviour=Followed(behaviour_models(db, s), 0.0)
        )
        plan = CandidatePlan("for_you", 10, user_id=member)
        await member_ctx.hydrate(plan)
        assert plan.state is not None and plan.state.behaviour is None  # the old model's: out
        assert plan.state.vector == before.vector  # the content taste stays
        assert member in await states.stale_vectors(100, published.version)

        proc.writer.behaviour.forget()  # (a process reads the pointer every 30 s)
        assert await proc.repair_vectors(limit=100) == 1
        folded = await states.get(member)
        assert folded.behaviour_model == published.version and folded.behaviour is not None
        assert member not in await states.stale_vectors(100, published.version)
        assert as_served(folded, published.version) == folded
        await member_ctx.hydrate(plan := CandidatePlan("for_you", 10, user_id=member))
        assert plan.state is not None and plan.state.behaviour == folded.behaviour

        assert (await proc.apply(likes(later, MOVIES[3:5]))).accepted == 2
        assert (await states.get(later)).behaviour_model == published.version
    finally:
        await Generations(db, s.behaviour_collection).drop()
        await client.drop_database(s.mongo_db)
        await client.close()
