"""The served pipeline as a :class:`Recommender`, and the replay that prepares it.

:class:`ServedRecommender` calls ``opendisco.serving.Discovery.recommend`` once per user
(the same code path as the API), timing every request, so the runner reports true
per-request latency. Before it can answer, the pipeline needs the evaluation world in its
backends — :func:`replay` does that, for the *fitting data of one stage* only:

1. items → MongoDB through ``opendisco.ingest.write_sample`` (the ingest loader's documents,
   with ``popularity``/``quality`` recomputed from the stage's fitting positives so the held-out
   period cannot leak through them; :func:`stage_items`), users with empty interests;
2. ``opendisco.ingest.reindex(settings)`` builds the versioned OpenSearch index (embeddings);
3. the fitting positives of every user of the stage (``everyone``, the default: the
   co-engagement graph then sees the same data the baselines are fitted on) or of the evaluated
   users only are posted, each user's in time order, as ``like`` events through
   ``opendisco.serving.Discovery.record_events`` (the API's path to
   ``opendisco.signals.EventProcessor.apply``) (user vectors, behaviour, exposure
   and graph state are derived from them exactly as in production); timestamps are moved onto
   a recent timeline (:func:`rebase`) because the processor rejects events older than its
   retention window. Batches of ``batch`` events hold few users' consecutive likes, so the
   processor coalesces their graph upserts per item.

Use a dedicated namespace (``index_alias``/``mongo_db``) per evaluation: replayed likes are
real events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from opendisco import clients
from opendisco._backend import backend_errors
from opendisco._settings import Settings
from opendisco.ingest import CACHE_COLLECTION, Embedder, publish_behaviour, reindex, write_sample
from opendisco.rerank import train_als
from opendisco.serving import Artifacts, Discovery

from ._data import Dataset
from ._split import Split, Stage

__all__ = [
    "ReplayReport",
    "ServedRecommender",
    "behaviour_vectors",
    "like_event",
    "rebase",
    "replay",
    "stage_items",
]


def like_event(user_id: str, item_id: str, ts: int | datetime, *, source: str = "eval") -> dict:
    """One ``like`` event as the events processor accepts it (idempotent id)."""
    when = ts if isinstance(ts, datetime) else datetime.fromtimestamp(int(ts), tz=UTC)
    return {
        "id": f"{source}-{user_id}-{item_id}-like",
        "type": "like",
        "user_id": user_id,
        "item_id": item_id,
        "ts": when,
    }


@dataclass
class ReplayReport:
    items: int
    behaviour: int
    users: int
    events: int
    accepted: int
    duplicates: int
    rejected: int
    seconds: float
    events_s: float = 0.0  # of which posting the likes through the event path


def stage_items(dataset: Dataset, stage: Stage, prior: float | None = None) -> list[dict[str, Any]]:
    """Catalogue documents with popularity/quality from the stage's fitting positives only:
    ``quality`` = c / (c + ``prior``) of an item's c fitting positives, ``prior`` by default
    the mean c of the items that have any. A fixed prior (10, about ml-latest-small's 7.5)
    saturated on a larger dataset: with 100 times the users every candidate scored ~1 and
    the linear model's quality weight ranked nothing."""
    counts = stage.item_counts
    if prior is None:
        rated = counts[counts > 0]
        prior = float(rated.mean()) if len(rated) else 1.0
    out = []
    for idx, item_id in enumerate(stage.items):
        doc = dict(
            dataset.items.get(item_id) or {"_id": item_id, "kind": "movie", "title": item_id}
        )
        c = float(counts[idx])
        doc["popularity"] = c
        doc["quality"] = round(c / (c + prior), 4)
        out.append(doc)
    return out


def behaviour_vectors(stage: Stage, *, factors: int = 32, seed: int = 0) -> dict[str, list[float]]:
    """Item id → behavioural vector, ``opendisco.rerank.train_als`` on the stage's fitting data."""
    positives = [
        (stage.users[u], stage.items[i], 1.0) for u, hist in enumerate(stage.history) for i in hist
    ]
    if not positives:
        return {}
    return train_als(positives, factors=factors, seed=seed).vectors()


def replay(
    settings: Settings,
    dataset: Dataset,
    split: Split,
    *,
    stage: str = "test",
    users: Sequence[int] | None = None,
    batch: int = 1000,
    step_s: int = 60,
    behaviour: bool = True,
    fresh: bool = False,
    max_likes: int | None = None,
    everyone: bool = True,
    embedder: Embedder | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> ReplayReport:
    """Load items, reindex and replay the evaluated users' fitting positives as likes.

    With ``behaviour`` the items get behavioural vectors trained (implicit ALS, as
    ``opendisco train`` does) on *every* user's fitting positives of the stage — the steady
    state of production, where ``train`` ran over the logged likes and sync carried the
    vectors into the index before new events arrive.
    ``max_likes`` replays only each user's latest that many positives (None: all of them;
    the user state keeps the latest 50, the graph gets every co-engagement) — the older ones
    still shape the behaviour vectors and are still excluded from the user's recommendations
    by the scorer. ``everyone`` replays every user with fitting positives (``users`` are the
    evaluated ones; both get their user documents), else only ``users``.
    ``fresh`` clears the namespace's MongoDB collections first, all but the embedding cache
    (events are idempotent by id, so replaying into a used namespace would not rebuild user
    states); only for a dedicated evaluation namespace. ``embedder``: the one to encode the
    catalogue with (another namespace's: replays of the same items share its cache).
    """
    t0 = time.perf_counter()
    st = split.stage(stage)  # type: ignore[arg-type]
    if fresh:
        _drop_database(settings)
    uidx = np.asarray(st.evaluable if users is None else users, dtype=np.int64)
    items = stage_items(dataset, st)
    vectors = behaviour_vectors(st, factors=settings.behaviour_dim) if behaviour else {}
    ridx = (np.flatnonzero([len(h) > 0 for h in st.history]) if everyone else uidx).astype(np.int64)
    ridx = np.union1d(ridx, uidx)
    user_docs = [
        dataset.users.get(st.users[u]) or {"_id": st.users[u], "interests": []} for u in ridx
    ]
    write_sample(settings, items, user_docs)
    asyncio.run(_store_behaviour(settings, vectors))
    if progress:
        progress("items", len(items))
    asyncio.run(reindex(settings, embedder=embedder))
    # fitting timestamps of the stage, aligned with stage.history
    ts_of = (
        split.train_ts
        if stage == "validation"
        else [
            np.concatenate([a, b]) for a, b in zip(split.train_ts, split.validation_ts, strict=True)
        ]
    )
    replay_now = datetime.now(UTC).replace(microsecond=0)
    cut = slice(-max_likes, None) if max_likes else slice(None)
    # user by user, each in time order: a batch holds few users' consecutive likes
    events = [
        like_event(st.users[u], st.items[i], ts)
        for u in ridx
        for i, ts in zip(
            st.history[u][cut], rebase(ts_of[u][cut], replay_now, step_s=step_s), strict=True
        )
    ]
    t_events = time.perf_counter()
    totals = asyncio.run(_post_events(settings, events, batch, progress, replay_now))
    events_s = time.perf_counter() - t_events
    return ReplayReport(
        items=len(items),
        behaviour=len(vectors),
        users=len(ridx),
        events=len(events),
        accepted=totals[0],
        duplicates=totals[1],
        rejected=totals[2],
        seconds=time.perf_counter() - t0,
        events_s=events_s,
    )


def _drop_database(settings: Settings) -> None:
    """Drop every collection of the namespace except the embedding cache (re-encoding the
    catalogue is the slow part of a reindex and its text does not change)."""
    with clients.mongo(settings) as client, backend_errors(f"clearing {settings.mongo_db!r}"):
        db = client[settings.mongo_db]
        for name in db.list_collection_names():
            if name != CACHE_COLLECTION:
                db.drop_collection(name)


async def _store_behaviour(settings: Settings, vectors: Mapping[str, list[float]]) -> None:
    """Replace the namespace's behaviour vectors with ``vectors`` (stored as `train` does)."""
    mongo = clients.mongo_async(settings)
    try:
        db = mongo[settings.mongo_db]
        await publish_behaviour(db, settings, vectors)
    finally:
        await mongo.close()


async def _post_events(
    settings: Settings,
    events: list[dict],
    batch: int,
    progress: Callable[[str, int], None] | None,
    now: datetime,
) -> tuple[int, int, int]:
    # offline: the events' item lookup may take the engine's whole timeout (the short
    # ``events_engine_timeout_s`` spares an interactive block; past it the likes' vectors would
    # miss the tastes, so a loaded machine would change what the replay learns)
    settings = settings.model_copy(update={"events_engine_timeout_s": settings.opensearch_timeout})
    mongo = clients.mongo_async(settings)
    os_client = clients.async_opensearch(settings)
    accepted = duplicates = rejected = 0
    try:
        # the API's path: Discovery.record_events -> EventProcessor.apply
        discovery = Discovery(settings, os_client, mongo[settings.mongo_db])
        for start in range(0, len(events), batch):
            chunk = events[start : start + batch]
            res = await discovery.record_events(chunk, now=now)
            accepted += int(res.accepted)
            duplicates += int(res.duplicates)
            rejected += len(res.rejected)
            if progress:
                progress("events", len(chunk))
    finally:
        await mongo.close()
        await os_client.close()
    return accepted, duplicates, rejected


def rebase(timestamps: np.ndarray, now: datetime, *, step_s: int = 60) -> list[datetime]:
    """One user's fitting timestamps moved onto a replay timeline ending just before ``now``.

    MovieLens histories span years while the events processor accepts only events inside its
    retention window (30 days), so each user's likes keep their *order* (ties keep the split's
    order) and are spaced ``step_s`` apart, the latest at ``now - step_s``. Recency therefore
    still ranks them; the original gaps are not kept.
    """
    n = len(timestamps)
    return [now - timedelta(seconds=step_s * (n - pos)) for pos in range(n)]


class ServedRecommender:
    """``Discovery.recommend`` behind the :class:`Recommender` protocol (one request per user).

    By default the pipeline serves what the settings name (``params_file``, ``model_file``,
    ``template_files``), exactly as the API does; ``params`` (template parameter overrides) and
    ``rerank`` (a ``RerankConfig`` mapping, merged over the defaults) replace the params file —
    what ``tune`` trials use; ``artifacts`` serves those artifacts as they are (the
    playground's current and draft).
    """

    name = "served"

    def __init__(
        self,
        settings: Settings,
        *,
        surface: str = "for_you",
        params: Mapping[str, Any] | None = None,
        rerank: Mapping[str, Any] | None = None,
        artifacts: Artifacts | None = None,
        concurrency: int = 1,
    ) -> None:
        # the evaluated policy is the deterministic one: no explored answers
        self.settings = settings.model_copy(update={"explore_rate": 0.0})
        self.surface = surface
        self.concurrency = concurrency
        self.latencies_ms: list[float] = []
        self.degraded = 0
        self.artifacts = (
            artifacts
            if artifacts is not None
            else Artifacts.from_settings(settings, params=params, rerank=rerank)
        )

    def recommend_batch(
        self, user_ids: Sequence[str], k: int, exclude: Sequence[Collection[str]]
    ) -> list[list[str]]:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(self.arecommend_batch(user_ids, k, exclude))
        finally:
            loop.close()

    async def arecommend_batch(
        self, user_ids: Sequence[str], k: int, exclude: Sequence[Collection[str]]
    ) -> list[list[str]]:
        mongo = clients.mongo_async(self.settings)
        os_client = clients.async_opensearch(self.settings)
        sem = asyncio.Semaphore(self.concurrency)
        try:
            discovery = Discovery(
                self.settings, os_client, mongo[self.settings.mongo_db], artifacts=self.artifacts
            )

            async def one(user: str, ex: Collection[str]) -> list[str]:
                async with sem:
                    t0 = time.perf_counter()
                    recs = await discovery.recommend(
                        user, surface=self.surface, k=k, exclude=tuple(ex)
                    )
                    self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                self.degraded += int(recs.degraded)
                return [r.id for r in recs.items]

            lists = list(
                await asyncio.gather(*(one(u, ex) for u, ex in zip(user_ids, exclude, strict=True)))
            )
            await discovery.drain()  # the served-list log, before the clients close
            return lists
        finally:
            await mongo.close()
            await os_client.close()
