"""The viewer's own feature lookups (taste profile, item–item rows of the recent positives, the
viewer's profile vector: ``FeatureStore.viewer``) on the real servers: started before the
candidate query and overlapping it, the same features as looked up after it, a failure of
theirs failing the request, and cancelled when the request no longer needs them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
import pytest
from serving_support import event

from opendisco import BackendError
from opendisco.queries import CandidateSet
from opendisco.rerank import CandidateBatch
from opendisco.signals import ItemSimilarity


async def _viewer_with_likes(discovery: Any, market: Any) -> tuple[str, list[str]]:
    """A member with a profile and three more likes; returns them and the first answer's
    other ids."""
    _, users = market
    viewer = next(u for u in users if u.get("profile_id"))
    v = viewer["_id"]
    first = await discovery.recommend(v, k=30)
    await discovery.record_events([event(v, "like", i) for i in first.ids[:3]])
    return v, first.ids[3:]


class _Recording:
    """The template source, noting whether the viewer's lookups had started by then."""

    name = "template"

    def __init__(self, inner: Any, started: list[str], fail: bool = False) -> None:
        self.inner, self.started, self.fail = inner, started, fail
        self.seen: list[bool] = []

    async def candidates(self, plan: Any) -> Any:
        self.seen.append(bool(self.started))
        if self.fail:
            raise BackendError("candidate query failed (injected)")
        return await self.inner.candidates(plan)


@pytest.fixture
def watched(discovery: Any) -> Any:
    """``discovery.features.viewer`` wrapped: its calls (user ids) and its outcomes."""
    store = discovery.features
    real = store.viewer
    calls: list[str] = []
    outcomes: list[str] = []
    gate: dict[str, asyncio.Event | None] = {"hold": None}

    async def viewer(state: Any, profile_id: Any = None) -> Any:
        calls.append(state.user_id if state is not None else "")
        try:
            if gate["hold"] is not None:
                await gate["hold"].wait()
            got = await real(state, profile_id)
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise
        outcomes.append("done")
        return got

    store.viewer = viewer
    yield calls, outcomes, gate
    del store.viewer


async def test_viewer_lookups_overlap_the_candidates_and_give_the_same_features(
    discovery: Any, market: Any, watched: Any
) -> None:
    calls, outcomes, _ = watched
    v, later = await _viewer_with_likes(discovery, market)
    state = await discovery.states.get(v)
    positives = state.recent_positive_ids
    assert len(positives) >= 3  # (other tests of the session may have liked for them too)
    sims = ItemSimilarity(discovery.db)
    version = "viewer-" + uuid.uuid4().hex[:6]
    await sims.replace({positives[0]: {later[0]: 0.7, later[1]: 0.2}}, version)
    discovery.features.similarity.forget_served()  # (read every 30 s): the new model now
    sources = discovery.parts.sources
    recording = _Recording(sources[0], calls)
    discovery.parts.sources = [recording]
    try:
        calls.clear()
        recs = await discovery.recommend(v, k=20)
        assert recording.seen == [True]  # started before the candidate query was sent
        assert calls == [v] and outcomes[-1] == "done"
        plan = await discovery.plan("for_you", 20, user_id=v)
        cs = await discovery.candidates(plan)
        batch = CandidateBatch.from_candidates(cs.candidates, now=plan.request.now)
        store = discovery.features
        store.sim_rows.clear()
        store.meta.clear()
        after = await store.for_batch(  # the viewer's side looked up here, after the candidates
            batch,
            plan.state,
            plan.graph_weights,
            inbox=plan.inbox,
            mutual_weights=plan.mutual_weights,
        )
        store.sim_rows.clear()
        store.meta.clear()
        started = asyncio.ensure_future(store.viewer(plan.state, plan.user["profile_id"]))
        overlapped = await store.for_batch(
            batch,
            plan.state,
            plan.graph_weights,
            inbox=plan.inbox,
            mutual_weights=plan.mutual_weights,
            viewer=started,
        )
        for name in ("item_sim", "content", "behaviour", "graph", "inbound", "taste"):
            assert np.array_equal(getattr(after, name), getattr(overlapped, name)), name
        assert after.affinity.keys() == overlapped.affinity.keys()
        for col, values in after.affinity.items():  # ages are taken at lookup time
            assert np.allclose(values, overlapped.affinity[col], rtol=1e-6, atol=1e-6), col
        # not vacuous: the trained rows and the taste profile reached the candidates
        assert overlapped.item_sim.max() > 0
        assert any(np.abs(v).sum() > 0 for v in overlapped.affinity.values())
        vector = started.result().vector
        assert vector is not None
        assert np.array_equal(vector, await store.profile_vector(plan.user["profile_id"]))
        assert recs.ids
    finally:
        discovery.parts.sources = sources
        await sims.replace({}, "cleared")
        discovery.features.sim_rows.clear()


class _FailingSimilarity(ItemSimilarity):
    async def rows(self, item_ids: Any, served: Any = None) -> Any:
        await asyncio.sleep(0.01)  # fails while the candidate query runs
        raise BackendError("item_similarity lookup failed (injected)")


async def test_a_failing_viewer_lookup_fails_the_request(
    discovery: Any, market: Any, watched: Any
) -> None:
    """The API then answers from the fallback (tests/api/test_api_safety.py): no list is
    served without the features the ranker expects."""
    v, _ = await _viewer_with_likes(discovery, market)
    store = discovery.features
    saved = store.similarity
    store.similarity = _FailingSimilarity(discovery.db)
    store.sim_rows.clear()
    try:
        with pytest.raises(BackendError, match="injected"):
            await discovery.recommend(v, k=10)
    finally:
        store.similarity = saved
    assert (await discovery.recommend(v, k=10)).ids  # the real lookups serve again


@pytest.mark.parametrize("outcome", ["failed", "empty", "cancelled"])
async def test_viewer_lookups_are_cancelled_when_the_request_no_longer_needs_them(
    outcome: str, discovery: Any, market: Any, watched: Any
) -> None:
    """The candidate query fails, comes back empty, or the request itself is cancelled (the
    API's deadline) while the viewer's lookups are still running: they are cancelled, not
    left behind, and nothing is reported as a lost exception."""
    calls, outcomes, gate = watched
    v, _ = await _viewer_with_likes(discovery, market)
    gate["hold"] = asyncio.Event()  # the viewer's lookups wait until the end of the test
    lost: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, ctx: lost.append(ctx))
    sources = discovery.parts.sources
    block, querying = asyncio.Event(), asyncio.Event()

    class Source:
        name = "template"

        async def candidates(self, plan: Any) -> Any:
            if outcome == "failed":
                raise BackendError("candidate query failed (injected)")
            if outcome == "cancelled":
                querying.set()
                await block.wait()
            return CandidateSet(plan.request.surface, "test", [], {}, 0, 0.0)

    discovery.parts.sources = [Source()]
    try:
        calls.clear()
        outcomes.clear()
        if outcome == "failed":
            with pytest.raises(BackendError, match="injected"):
                await discovery.recommend(v, k=10)
        elif outcome == "empty":
            assert (await discovery.recommend(v, k=10)).items == []
        else:
            # the deadline falls while the candidate query runs; a fixed 0.2 s could fall
            # before it (the member's reads on a loaded machine): no lookup started yet
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as deadline:

                    async def falls() -> None:
                        await querying.wait()
                        deadline.reschedule(loop.time())

                    falling = asyncio.ensure_future(falls())
                    await discovery.recommend(v, k=10)
            await falling
        for _ in range(10):
            await asyncio.sleep(0)
        assert calls == [v] and outcomes == ["cancelled"]
    finally:
        discovery.parts.sources = sources
        gate["hold"] = None
        loop.set_exception_handler(None)
    assert lost == []
