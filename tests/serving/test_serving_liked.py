"""A liked profile is never a candidate again, also after the bounded ``seen`` window has
forgotten it (real servers: events applied by the processor, rules read as served)."""

from __future__ import annotations

import uuid
from typing import Any

from opendisco.signals import EventProcessor, EventsConfig, UserStateConfig, UserStateStore


def _ev(user: str, kind: str, item: str) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "type": kind, "user_id": user, "item_id": item}


async def test_a_liked_profile_stays_excluded_after_the_seen_window(
    discovery: Any, market: Any
) -> None:
    """A heavy swiper: one like, then more likes and passes than the state's windows keep
    (``max_recent`` 2, ``max_seen`` 4 here; 50 and 2,000 by default). The liked profile has
    left ``seen`` and the recent lists, and is still excluded from the candidate query and
    from every candidate the engine returns (it was a candidate before the like)."""
    _, users = market
    member = users[43]["_id"]
    first = await discovery.recommend(member, k=12)
    assert len(first.ids) >= 10
    liked, rest = first.ids[0], first.ids[1:10]
    cfg = EventsConfig(user_state=UserStateConfig(max_recent=2, max_seen=4))
    proc = EventProcessor(discovery.settings, discovery.db, discovery.os, config=cfg)
    assert (await proc.apply([_ev(member, "like", liked)])).accepted == 1
    later = [_ev(member, "like", i) for i in rest[:3]] + [_ev(member, "pass", i) for i in rest[3:]]
    assert (await proc.apply(later)).accepted == len(later)
    state = await UserStateStore(discovery.db).get(member)
    recent = {e["id"] for e in (*state.positives, *state.negatives)}
    assert liked not in state.seen and liked not in recent  # the windows forgot it
    plan = await discovery.plan("for_you", 200, user_id=member)
    assert liked in plan.rules.seen_ids and liked in plan.request.params["exclude_ids"]
    cands = await discovery.candidates(plan)
    assert len(cands.candidates) > 20 and liked not in {c.id for c in cands.candidates}
    assert liked not in (await discovery.recommend(member, k=50)).ids
