"""The member context's reads on the real servers: the users document, state, blocks and inbox
in one round trip, the recent positives' and the matched profiles' edges in one ``find``, and
a failure of any one of the concurrent reads failing the request (never a list built without
the rules)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from serving_support import event

from opendisco import BackendError
from opendisco.serving import GraphNeighbours, MemberContext
from opendisco.signals import RECENT_FANOUT, ItemGraph, UserGraph, UserStateStore


def _part(discovery: Any, kind: type) -> Any:
    return next(h for h in discovery.parts.query_hydrators if isinstance(h, kind))


async def _matched_viewer(discovery: Any, market: Any) -> str:
    """A member with likes (recent positives) and a match."""
    items, users = market
    owner_of = {it["_id"]: it["owner_id"] for it in items}
    open_ = sorted(
        (u for u in users if len(u["pref_genders"]) == 3),
        key=lambda u: u["pref_age_min"] - u["pref_age_max"],
    )
    viewer = open_[2]
    v = viewer["_id"]
    recs = await discovery.recommend(v, k=30)
    match, liked = recs.ids[0], recs.ids[1:4]
    other = owner_of[match]
    fan = "fan-" + uuid.uuid4().hex[:6]
    await discovery.record_events(
        [
            event(other, "like", viewer["profile_id"]),
            event(v, "like", match),
            *(event(v, "like", i) for i in liked),
            *(event(fan, "like", i) for i in (match, *liked, recs.ids[-1])),
        ]
    )
    return v


async def test_graph_and_mutual_edges_come_from_one_read(discovery: Any, market: Any) -> None:
    v = await _matched_viewer(discovery, market)
    graph = _part(discovery, GraphNeighbours).graph
    reads: list[list[str]] = []
    rows = graph._rows

    async def counted(ids: Any) -> Any:
        ids = list(ids)
        reads.append(ids)
        return await rows(ids)

    graph._rows = counted
    try:
        graph._cache.clear()  # rows earlier requests read (``graph_cache_s``)
        plan = await discovery.plan("for_you", 20, user_id=v)
        again = await discovery.plan("for_you", 20, user_id=v)
    finally:
        del graph._rows
    state = await UserStateStore(discovery.db).get(v)
    inbox = await UserGraph(discovery.db).inbox(v)
    recent = state.recent_positive_ids[:RECENT_FANOUT]
    matched = sorted(set(inbox.matches.values()))
    assert recent and matched  # not vacuous: both kinds of edges are read
    assert len(reads) == 1 and set(reads[0]) == {*recent, *matched}  # the second: cached
    assert (again.graph_weights, again.mutual_weights) == (plan.graph_weights, plan.mutual_weights)
    assert plan.inbox == inbox
    assert plan.graph_weights == await ItemGraph(discovery.db).weights(recent)
    assert plan.mutual_weights == await ItemGraph(discovery.db).weights(matched)
    assert plan.mutual_weights  # the matched profile's co-engagement reached the plan
    assert plan.request.params.get("graph_ids")


class _FailingInbox(UserGraph):
    async def inbox(self, member: str) -> Any:
        raise BackendError("user_inbox lookup failed (injected)")


class _FailingState(UserStateStore):
    async def get(self, user_id: str) -> Any:
        raise BackendError("user_state lookup failed (injected)")


@pytest.mark.parametrize("failing", ["inbox", "state"])
async def test_a_failing_member_read_fails_the_request(
    failing: str, discovery: Any, market: Any
) -> None:
    """Either side of the concurrent member reads failing fails the whole request (the API
    then answers from the fallback, which reads the rules itself): no candidate request is
    ever built from a partial member context."""
    _, users = market
    v = users[0]["_id"]
    member = _part(discovery, MemberContext)
    saved = member.users, member.states
    if failing == "inbox":
        member.users = _FailingInbox(discovery.db)
    else:
        member.states = _FailingState(discovery.db)
    sent: list[Any] = []
    sources = discovery.parts.sources

    class Recording:
        name = "template"

        async def candidates(self, plan: Any) -> Any:
            sent.append(plan)
            return await sources[0].candidates(plan)

    discovery.parts.sources = [Recording()]
    try:
        with pytest.raises(BackendError, match="injected"):
            await discovery.recommend(v, k=10)
        assert sent == []
    finally:
        member.users, member.states = saved
        discovery.parts.sources = sources
    assert (await discovery.recommend(v, k=10)).ids  # the real reads serve again
