"""The served-list log as a side effect of the real pipeline, and exploration's propensities."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from opendisco import Settings, clients
from opendisco.rerank import FEATURE_NAMES, LinearScorer, RerankConfig, join_outcomes
from opendisco.serving import Artifacts, Discovery, Explorer
from opendisco.signals import SERVED_LISTS, ServedList, ServedLog, sample_rows


@contextlib.asynccontextmanager
async def _discovery(settings: Settings, model: Any, **kw: Any) -> AsyncIterator[Discovery]:
    """A pipeline of its own on the real servers (its clients closed after)."""
    os_client = clients.async_opensearch(settings)
    mongo = clients.mongo_async(settings)
    try:
        yield Discovery(settings, os_client, mongo[settings.mongo_db], model=model, **kw)
    finally:
        await os_client.close()
        await mongo.close()


def _like(user: str, item: str) -> dict[str, Any]:
    return {"id": f"sl-{user}-{item}", "type": "like", "user_id": user, "item_id": item}


async def test_every_answer_logs_what_the_ranker_saw(discovery: Any, market: Any) -> None:
    _, users = market
    user = users[40]["_id"]
    first = await discovery.recommend(user, k=5)
    assert (await discovery.record_events([_like(user, first.ids[0])])).accepted == 1
    recs = await discovery.recommend(user, k=10, request_id="req-log-1")
    assert recs.request_id == "req-log-1" and recs.surface == "for_you"
    await discovery.drain()
    doc = await discovery.db[SERVED_LISTS].find_one({"_id": "req-log-1"})
    assert doc is not None
    assert doc["user_id"] == user and doc["requested_surface"] == "for_you" and doc["k"] == 10
    assert doc["version"] == recs.version and doc["features"] == list(FEATURE_NAMES)
    assert doc["candidates"] == len(doc["ids"])  # all fitted under served_log_rows
    # shown positions name the rows of what was answered, in order
    assert [doc["ids"][r] for r in doc["shown"]] == recs.ids
    X = np.frombuffer(bytes(doc["X"]), dtype="<f4").reshape(len(doc["ids"]), len(FEATURE_NAMES))
    assert np.isfinite(X).all() and X[:, FEATURE_NAMES.index("content_sim")].any()
    assert doc["propensity"] == [1.0] * 10 and doc["explored"] is False
    assert doc["policy"] == {"kind": "deterministic"}


async def test_explored_answers_log_plackett_luce_propensities(
    market_settings: Settings, market: Any, model: Any
) -> None:
    _, users = market
    explorer = Explorer(rate=1.0, pool_factor=2.0, sharpness=1.0)
    async with _discovery(market_settings, model, explorer=explorer) as disc:
        base = await disc.recommend(users[41]["_id"], k=4, explain=True)  # never explored
        recs = await disc.recommend(users[41]["_id"], k=4, request_id="req-explore-1")
        assert recs.explored and not base.explored
        await disc.drain()
        doc = await disc.db[SERVED_LISTS].find_one({"_id": "req-explore-1"})
    assert doc["explored"] and doc["policy"]["kind"] == "plackett_luce"
    pool = [doc["ids"][r] for r in doc["pool"]]
    assert pool[:4] == base.ids and len(pool) == 8  # the deterministic order's first 2k rows
    shown = [doc["ids"][r] for r in doc["shown"]]
    assert shown == recs.ids and set(shown) <= set(pool)
    # slot j's propensity: weight of the pick / weight of what was left
    w = np.asarray(doc["pool_w"])
    left = np.ones(len(pool), dtype=bool)
    for j, item in enumerate(shown):
        i = pool.index(item)
        assert abs(doc["propensity"][j] - w[i] / w[left].sum()) < 1e-9
        left[i] = False


def test_sampled_rows_keep_the_shown_ones_and_their_inclusion_probabilities() -> None:
    rng = np.random.default_rng(0)
    rows, incl = sample_rows(100, [97, 3, 50], 10, rng)
    assert len(rows) == 10 and {3, 50, 97} <= set(rows.tolist())
    assert list(rows) == sorted(rows)
    kept = dict(zip(rows.tolist(), incl.tolist(), strict=True))
    assert kept[3] == kept[50] == kept[97] == 1.0
    assert all(abs(p - 7 / 97) < 1e-12 for r, p in kept.items() if r not in (3, 50, 97))
    rows, incl = sample_rows(5, [1], 10, rng)
    assert rows.tolist() == [0, 1, 2, 3, 4] and incl.tolist() == [1.0] * 5


def _served(rid: str, at: datetime, n: int = 30) -> ServedList:
    return ServedList(
        request_id=rid,
        at=at,
        user_id="u1",
        surface="for_you",
        requested_surface="for_you",
        version="v",
        degraded=False,
        k=5,
        feature_names=FEATURE_NAMES,
        X=np.ones((n, len(FEATURE_NAMES))),
        ids=[f"i{j}" for j in range(n)],
        shown=[0, 1, 2, 3, 4],
        propensity=[1.0] * 5,
    )


async def test_the_longest_retentions_purge_on_the_store(async_db: Any) -> None:
    """``served_log_days`` and ``dead_letter_days`` at their bound: the cutoffs are dates the
    store compares (10^6 days was an OverflowError before any store call)."""
    from opendisco._settings import RETENTION_DAYS_MAX
    from opendisco.ingest._letters_admin import purge_resolved

    sub = async_db.client[f"{async_db.name}slmax"]
    try:
        log = ServedLog(sub, days=RETENTION_DAYS_MAX, purge_every_s=1e9)
        log.log(_served("r-old", datetime.now(UTC) - timedelta(days=1)))
        await log.drain()
        assert await log.purge_expired() == 0 and len(await log.read()) == 1
        assert await purge_resolved(sub, "items", RETENTION_DAYS_MAX) == 0
    finally:
        await async_db.client.drop_database(sub.name)


async def test_log_is_bounded_batched_and_expires(async_db: Any) -> None:
    sub = async_db.client[f"{async_db.name}sl"]
    try:
        # the flusher's own purge waits (purge_every_s): the explicit purge is checked below
        log = ServedLog(sub, max_rows=10, max_queue=120, days=1.0, purge_every_s=1e9)
        now = datetime.now(UTC).replace(microsecond=0)
        for j in range(130):  # no running flusher yet is fine: log() never waits
            log.log(_served(f"r{j:03d}", now - timedelta(days=2 if j < 20 else 0)))
        assert log.dropped == 10 and log.pending == 120
        await log.drain()
        assert log.written == 120 and log.pending == 0
        docs = await log.read()
        assert len(docs) == 120 and all(len(d["ids"]) == 10 for d in docs)
        assert all(d["X"].shape == (10, len(FEATURE_NAMES)) for d in docs)
        assert all(sum(p == 1.0 for p in d["incl"]) >= 5 for d in docs)
        assert len(await log.read(since=now - timedelta(hours=1))) == 100
        assert await log.purge_expired(now) == 20
        assert await sub[SERVED_LISTS].count_documents({}) == 100
        # the background flusher: log() from a running loop writes without drain()
        log.log(_served("late", now))
        for _ in range(50):
            if log.written == 121:
                break
            await asyncio.sleep(0.05)
        assert log.written == 121
        # a repeated request id keeps the first list; the rest of the batch is written
        log.log(_served("late", now))
        log.log(_served("later", now))
        await log.drain()
        assert log.written == 122 and log.duplicates == 1 and log.failed == 0
    finally:
        await async_db.client.drop_database(f"{async_db.name}sl")


async def test_drain_while_a_write_is_in_flight_loses_nothing(async_db: Any) -> None:
    """drain() at any moment of the flusher's work (sleeping, mid-insert, between batches)
    writes every queued list: an evaluation or a shutdown drains right after serving."""
    sub = async_db.client[f"{async_db.name}sd"]
    try:
        now = datetime.now(UTC)
        total = 0
        for trial, pause in enumerate((0.0, 0.0005, 0.002, 0.005, 0.01, 0.02, 0.05)):
            log = ServedLog(sub, max_rows=10, flush_every_s=0.0)
            for j in range(120):  # three commands' worth
                log.log(_served(f"t{trial}-{j:03d}", now))
            await asyncio.sleep(pause)  # the flusher is somewhere in its work
            await log.drain()
            total += 120
            assert (log.written, log.failed, log.pending) == (120, 0, 0), (pause, log.written)
            assert await sub[SERVED_LISTS].count_documents({}) == total
    finally:
        await async_db.client.drop_database(f"{async_db.name}sd")


async def test_a_list_whose_rows_are_cut_short_is_skipped_not_fatal(async_db: Any) -> None:
    """One stored list whose ``X`` is not whole rows (cut short, written by other code) made
    every read fail (numpy: buffer size must be a multiple of element size), so
    `opendisco train ltr` and `eval offpolicy` died on it; it now reads as no rows and the
    join counts it under ``no_rows``, the other lists still train."""
    sub = async_db.client[f"{async_db.name}sx"]
    try:
        log = ServedLog(sub, max_rows=10)
        now = datetime.now(UTC)
        for rid in ("good", "cut"):
            log.log(_served(rid, now))
        await log.drain()
        doc = await sub[SERVED_LISTS].find_one({"_id": "cut"})
        await sub[SERVED_LISTS].update_one({"_id": "cut"}, {"$set": {"X": doc["X"][:-3]}})
        docs = {d["_id"]: d for d in await log.read()}
        assert docs["good"]["X"].shape == (10, len(FEATURE_NAMES))
        assert docs["cut"]["X"].shape == (0, len(FEATURE_NAMES))
        likes = [
            {"type": "like", "user_id": "u1", "item_id": "i0", "ts": now, "request_id": r}
            for r in ("good", "cut")
        ]
        data = join_outcomes(list(docs.values()), likes)
        assert data.list_ids == ["good"] and data.skipped["no_rows"] == 1
    finally:
        await async_db.client.drop_database(f"{async_db.name}sx")


async def test_a_log_whose_client_was_closed_drops_and_stops(settings: Settings) -> None:
    """Its owner closed the client without draining: no retry can ever write the queue. The
    lists are dropped and counted and the flusher ends, instead of retrying for good (with a
    warning every few seconds from a task nothing owns)."""
    mongo = clients.mongo_async(settings)
    log = ServedLog(mongo[f"{settings.mongo_db}sc"], max_rows=10, flush_every_s=0.05)
    await mongo.close()
    now = datetime.now(UTC)
    for j in range(3):
        log.log(_served(f"c{j}", now))
    task = log._task
    assert task is not None
    await asyncio.wait_for(task, 10)  # ended by itself
    assert (log.written, log.dropped, log.pending) == (0, 3, 0)


class _Recording(LinearScorer):
    """The linear scorer, keeping a copy of every feature matrix it is given."""

    def __init__(self) -> None:
        super().__init__(RerankConfig())
        self.seen: list[np.ndarray] = []

    def score(self, X: np.ndarray) -> np.ndarray:
        self.seen.append(np.array(X, copy=True))
        return super().score(X)


async def test_the_scorer_is_fed_exactly_the_rows_the_log_keeps(
    market_settings: Settings, market: Any, model: Any
) -> None:
    """No training/serving skew: for every (member, request, item) the stored row is, to
    float32, what the scorer scored (same names, order, values), explored answers included,
    and the shown rows name the answer."""
    _, users = market
    scorer = _Recording()
    async with _discovery(
        market_settings,
        model,
        artifacts=Artifacts.inline(scorer=scorer, model_name="recording"),
        explorer=Explorer(rate=0.5, rng=np.random.default_rng(3)),
    ) as disc:
        answers = {}
        for n, user in enumerate(users[:8]):
            recs = await disc.recommend(user["_id"], k=8, request_id=f"skew-{n}")
            answers[recs.request_id] = (scorer.seen[-1], recs)
        assert len(scorer.seen) == 8
        await disc.drain()
        logged = {d["_id"]: d for d in await ServedLog(disc.db).read()}
        assert any(logged[rid]["explored"] for rid in answers)
        for rid, (X, recs) in answers.items():
            doc = logged[rid]
            assert doc["features"] == list(FEATURE_NAMES) and doc["user_id"] == recs.served.user_id
            row = {item: r for r, item in enumerate(recs.served.ids)}
            scored = X[[row[item] for item in doc["ids"]]].astype(np.float32)
            assert np.array_equal(doc["X"], scored.astype(np.float64)), rid
            assert [doc["ids"][r] for r in doc["shown"]] == recs.ids


async def test_an_empty_answer_logs_as_the_pipelines_not_the_fallbacks(
    discovery: Any, market: Any
) -> None:
    """A member who excluded every item gets the pipeline's answer, empty and not degraded:
    its served list says so (policy deterministic, nothing shown), as every other of its
    answers (the API logged it with policy ``fallback``, a list the fallback never made, in
    what training and off-policy evaluation read)."""
    items, users = market
    every = [str(it["_id"]) for it in items]
    recs = await discovery.recommend(
        users[42]["_id"], k=5, exclude=every, request_id="req-log-empty"
    )
    assert recs.ids == [] and not recs.degraded
    await discovery.drain()
    doc = await discovery.db[SERVED_LISTS].find_one({"_id": "req-log-empty"})
    assert doc is not None, "the empty answer was not logged by the pipeline"
    assert doc["policy"] == {"kind": "deterministic"} and doc["degraded"] is False
    assert doc["ids"] == [] and doc["shown"] == [] and doc["requested_surface"] == "for_you"
