"""Marketplace health through the served pipeline on the real servers (issue 17): the
reciprocal step and mutual likes, exposure pacing with served impressions, live trending."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from serving_support import event

from opendisco._store import lease
from opendisco.rerank import (
    FEATURE_NAMES,
    CandidateBatch,
    FeatureStore,
    RerankConfig,
    Reranker,
    assemble_features,
    merged_config,
)
from opendisco.serving import Artifacts, Discovery, Rule, stored_rule_fields
from opendisco.signals import PACING, PacingController, PacingTargets, UserGraph
from opendisco.signals._pacing import _DOC_ID, PACING_LOCKS

#: pacing alone: the exposure and inbound damps, the reciprocal step and the budget's smooth
#: demotion off (what is left to move a member is the pacing cut or the attention cap)
PACING_ONLY = {
    "pacing_strength": 0.0,
    "exposure_strength": 0.0,
    "inbound_strength": 0.0,
    "reciprocal_weight": 0.0,
}


def _broad(users: list[dict[str, Any]], nth: int = 0) -> dict[str, Any]:
    """A member open to every gender and a wide age range (many eligible profiles)."""
    open_ = [u for u in users if len(u["pref_genders"]) == 3]
    return sorted(open_, key=lambda u: u["pref_age_min"] - u["pref_age_max"])[nth]


async def _refreshed(discovery: Any) -> None:
    """Counter writes become searchable at the next refresh (≤ 1 s); tests do not wait."""
    await discovery.os.indices.refresh(index=discovery.exposure.index)


def _rank(recs: Any, item: str) -> int:
    return recs.ids.index(item) if item in recs.ids else 10_000


async def test_reciprocal_step_and_likers_source(discovery: Any, market: Any) -> None:
    items, users = market
    owner_of = {it["_id"]: it["owner_id"] for it in items}
    viewer = _broad(users)
    v = viewer["_id"]
    first = (await discovery.recommend(v, k=5)).ids[0]
    assert (await discovery.record_events([event(v, "like", first)])).accepted == 1
    before = await discovery.recommend(v, k=60, explain=True)
    assert before.surface == "for_you" and len(before.ids) >= 30
    # a member low in the viewer's list likes the viewer's profile
    cand = before.ids[-1]
    liker = owner_of[cand]
    await discovery.record_events([event(liker, "like", viewer["profile_id"])])
    after = await discovery.recommend(v, k=60, explain=True)
    assert _rank(after, cand) < 10, (_rank(before, cand), _rank(after, cand))
    rec = next(r for r in after.items if r.id == cand)
    assert "likers" in rec.sources  # the likers source brought it as a candidate
    steps = {t["step"]: t for t in rec.trace or []}
    assert "reciprocal" in steps and steps["reciprocal"]["to"] < steps["reciprocal"]["from"]
    assert after.explain["rendered"]["sources"]["likers"]
    # the same request one-sided: no reciprocal step, the candidate ranks lower (the likers
    # source alone still lifts it from where it was; how far depends on what earlier tests in
    # the session left in the shared market, so only the direction is asserted)
    one_sided = Discovery(
        discovery.settings,
        discovery.os,
        discovery.db,
        artifacts=Artifacts.inline(rerank={"reciprocal_mode": "off"}),
        model=discovery.encoder.model,
    )
    off = await one_sided.recommend(v, k=60, explain=True)
    assert _rank(off, cand) > _rank(after, cand), (_rank(after, cand), _rank(off, cand))
    rec_off = next(r for r in off.items if r.id == cand)
    assert "reciprocal" not in {t["step"] for t in rec_off.trace or []}


async def test_a_new_member_sees_who_liked_them(discovery: Any, market: Any) -> None:
    """A member without history (cold_start) who receives a like sees the liker's profile: the
    likers source serves new members too (their first likes received are the likeliest
    matches)."""
    items, users = market
    owner_of = {it["_id"]: it["owner_id"] for it in items}
    viewer = _broad(users, 3)
    v = viewer["_id"]
    before = await discovery.recommend(v, k=60)
    assert before.surface == "cold_start" and len(before.ids) >= 10
    liked_last = next(i for i in reversed(before.ids) if owner_of[i] != users[47]["_id"])
    await discovery.record_events([event(owner_of[liked_last], "like", viewer["profile_id"])])
    after = await discovery.recommend(v, k=60, explain=True)
    assert after.surface == "cold_start"
    rec = next(r for r in after.items if r.id == liked_last)
    assert "likers" in rec.sources
    assert _rank(after, liked_last) < _rank(before, liked_last)


async def test_likers_blocked_or_ineligible_are_never_shown(discovery: Any, market: Any) -> None:
    """The likers source proposes members by owner id; the hard rules still decide: a liker
    whose preferences exclude the viewer is never shown, and one who then blocks the viewer
    disappears with everything they own."""
    items, users = market
    by_id = {it["_id"]: it for it in items}
    owner_of = {it["_id"]: it["owner_id"] for it in items}
    viewer = _broad(users, 2)
    v = viewer["_id"]
    first = (await discovery.recommend(v, k=5)).ids[0]  # history: for_you, not cold_start
    assert (await discovery.record_events([event(v, "like", first)])).accepted == 1
    rules = await discovery.rules_for(v)
    base = await discovery.recommend(v, k=60)
    assert base.surface == "for_you"
    # likers get history by liking: leave alone the member the cold-start test serves
    keep_cold = users[47]["_id"]
    liked_last = next(i for i in reversed(base.ids) if owner_of[i] != keep_cold)
    eligible = owner_of[liked_last]
    excluded = next(
        u
        for u in users
        if u["_id"] != keep_cold
        and u.get("profile_id") in by_id
        and rules.broken(u["profile_id"], stored_rule_fields(by_id[u["profile_id"]]))
        == Rule.ELIGIBILITY
    )
    res = await discovery.record_events(
        [event(m, "like", viewer["profile_id"]) for m in (eligible, excluded["_id"])]
    )
    assert res.accepted == 2
    plan = await discovery.plan("for_you", 60, user_id=v)
    assert {eligible, excluded["_id"]} <= set(plan.request.params["liker_ids"])
    after = await discovery.recommend(v, k=60, explain=True)
    shown = {r.id: r for r in after.items}
    assert liked_last in shown and "likers" in shown[liked_last].sources
    assert excluded["profile_id"] not in shown
    assert excluded["profile_id"] not in {c.id for c in after.candidate_set.candidates}
    # the liker blocks the viewer (hides their profile): gone, though they still liked them
    res = await discovery.record_events([event(eligible, "hide", viewer["profile_id"])])
    assert res.accepted == 1
    assert eligible in (await discovery.plan("for_you", 60, user_id=v)).request.params["liker_ids"]
    blocked = await discovery.recommend(v, k=60, explain=True)
    assert not {owner_of.get(i) for i in blocked.ids} & {eligible, excluded["_id"]}
    assert all(owner_of.get(c.id) != eligible for c in blocked.candidate_set.candidates), (
        "the engine already excludes a blocking member"
    )


async def test_mutual_likes_feed_friends_of_matches(discovery: Any, market: Any) -> None:
    items, users = market
    owner_of = {it["_id"]: it["owner_id"] for it in items}
    viewer = _broad(users, 1)
    v = viewer["_id"]
    recs = await discovery.recommend(v, k=40)
    match, friend = recs.ids[0], recs.ids[-1]
    other = owner_of[match]
    # the viewer and the owner of `match` like each other; someone who liked `match` also
    # liked `friend` (a friend of the match)
    res = await discovery.record_events(
        [
            event(other, "like", viewer["profile_id"]),
            event(v, "like", match),
            event("fan-" + uuid.uuid4().hex[:6], "like", match),
        ]
    )
    assert res.accepted == 3 and [set(p) for p in res.mutual] == [{v, other}]
    fan = "fan-" + uuid.uuid4().hex[:6]
    await discovery.record_events([event(fan, "like", match), event(fan, "like", friend)])
    assert await UserGraph(discovery.db).mutual(v) == [other]
    inbox = await UserGraph(discovery.db).inbox(other)
    assert inbox.matches == {v: viewer["profile_id"]}
    after = await discovery.recommend(v, k=60, explain=True)
    assert friend in json.dumps(after.explain["rendered"]["sources"]["mutual"])
    cands = {c.id: c for c in after.candidate_set.candidates}
    assert "mutual" in cands[friend].sources
    feats = await discovery.features.lookup(
        [friend], owners={friend: owner_of[friend]}, mutual_weights={friend: 2.0}
    )
    assert feats.mutual is not None and feats.mutual[0] == 2.0


async def test_served_impressions_count_once(discovery: Any, market: Any) -> None:
    items, users = market
    profile = items[90]["_id"]
    before = (await discovery.exposure.counts([profile]))[profile]
    shown = [{"id": profile, "item": {"kind": "profile"}}, {"id": "m1", "item": {"kind": "movie"}}]
    for _ in range(3):
        discovery.record_served(shown)  # what the API does with each answer (no I/O)
    await discovery.served.drain()
    assert (await discovery.exposure.counts([profile]))[profile] == before + 3
    # the client's impression events of a served list are not counted again; others are
    v = users[5]["_id"]
    res = await discovery.record_events(
        [event(v, "impression", profile, request_id="rq1"), event(v, "impression", profile)]
    )
    assert res.accepted == 2
    assert (await discovery.exposure.counts([profile]))[profile] == before + 4


async def test_a_forced_pacing_step_waits_for_a_step_in_progress(
    discovery: Any, market: Any
) -> None:
    """Another caller holds the step's lease (the pipeline's own background refresh, say): an
    unforced refresh of a stale state leaves the period to it; a forced one waits for it and
    then steps (``force_wait_s``), not skipped."""
    await discovery.ensure()  # the exposure counters' index (the step measures them)
    ctl = PacingController(discovery.settings, discovery.db, discovery.exposure)
    await ctl.refresh(force=True)
    first = await ctl.read()  # as stored (MongoDB keeps milliseconds)
    assert first.updated_at is not None
    held = asyncio.Event()

    async def holder() -> None:
        locks = discovery.db[PACING_LOCKS]
        async with lease(locks, [_DOC_ID], lease_s=60.0, wait_s=5.0, what="pacing"):
            held.set()
            await asyncio.sleep(1.0)

    task = asyncio.ensure_future(holder())
    try:
        await held.wait()
        later = first.updated_at + timedelta(days=1)  # the stored state is a day old by then
        unforced = await ctl.refresh(now=later)
        assert unforced.updated_at == first.updated_at  # busy: left to the holder
        forced = await ctl.refresh(force=True)
        assert task.done()  # it waited for the holder's step to end
        assert forced.updated_at > first.updated_at and forced.steps == first.steps + 1
    finally:
        await task  # the holder's lease released whatever happened here


async def test_a_pacing_state_dated_ahead_of_this_clock_is_stepped(
    discovery: Any, market: Any
) -> None:
    """This host's clock stepped back an hour after the last step (or the host that stepped
    runs an hour ahead): the stored state is dated in the future. Read as fresh, no process
    stepped the controller until this clock caught up (an hour and a period); its age is
    unknown (dated more than a period ahead), so it is stale: the next refresh steps."""
    await discovery.ensure()
    ctl = PacingController(discovery.settings, discovery.db, discovery.exposure)
    await ctl.refresh(force=True)
    first = await ctl.read()
    assert first.updated_at is not None
    behind = first.updated_at - timedelta(hours=1)
    stepped = await ctl.refresh(now=behind)
    assert stepped.steps == first.steps + 1 and stepped.updated_at == behind
    again = await ctl.refresh(now=behind + timedelta(seconds=1))  # fresh now: not stepped
    assert again.steps == stepped.steps


async def test_drain_waits_for_the_pipelines_pacing_step(discovery: Any, market: Any) -> None:
    """A request starts the pipeline's background pacing step; ``drain`` (shutdown, a test's
    end) waits for it, so closing the clients never leaves its lease held for ``lease_s``."""
    await discovery.ensure()
    discovery.pacing._read_at = float("-inf")  # due now
    discovery.pacing.budget()
    running = discovery.pacing._refresh
    assert running is not None and not running.done()
    await discovery.drain()
    assert running.done()
    assert await discovery.db[PACING_LOCKS].find_one({"_id": _DOC_ID}) is None


async def test_pacing_controller_and_step_on_the_live_market(discovery: Any, market: Any) -> None:
    items, users = market
    viewer = _broad(users, 2)
    v = viewer["_id"]
    recs = await discovery.recommend(v, k=30)
    star = recs.ids[1]
    # attention concentrated on `star`: likes from 40 members, and many impressions
    await discovery.record_events(
        [event(f"admirer-{uuid.uuid4().hex[:6]}", "like", star) for _ in range(40)]
    )
    discovery.record_served([{"id": star, "item": {"kind": "profile"}}] * 400)
    await discovery.served.drain()
    await _refreshed(discovery)
    targets = PacingTargets(top1_share=0.05, budget_min=0.5, budget_max=8.0, gain=0.5)
    ctl = PacingController(discovery.settings, discovery.db, discovery.exposure, targets=targets)
    state = await ctl.refresh(force=True)
    assert state.top1_share > 0.05 and state.members == len(items)
    assert state.budget < targets.budget_max and state.impressions is not None
    tighter = await ctl.refresh(force=True)
    assert tighter.budget < state.budget  # still too concentrated: tightens again
    # another process reads the same state
    assert (
        await PacingController(discovery.settings, discovery.db, discovery.exposure).read()
    ).budget == tighter.budget
    # the served pipeline applies it: `star` is far ahead of its paced budget
    discovery.pacing.state = tighter
    discovery.pacing._read_at = float("inf")  # no background refresh in this test
    paced = await discovery.recommend(v, k=30, explain=True)
    rec = next((r for r in paced.items if r.id == star), None)
    steps = {t["step"]: t for t in (rec.trace if rec else [])}
    assert rec is None or ("pacing" in steps and steps["pacing"]["delta"] < 0), steps
    assert _rank(paced, star) > _rank(recs, star)
    # the budget enforced below the page cut: pacing alone (the exposure and inbound damps,
    # the reciprocal step and the smooth demotion off). `top` leads the page;
    # once it is served past its budget (the live counters), the cut takes it off the page of
    # 3, the page stays full, and everything on it is eligible (in the unpaced answer)
    weak = PACING_ONLY
    discovery.reranker = Reranker(merged_config(weak))
    top = (await discovery.recommend(v, k=3, explain=True)).ids[0]
    # past the controller's budget (in impressions per window; member budgets are at most
    # that), below the exposure cap (a capped member would be ineligible, proving nothing)
    over = int(np.ceil(tighter.impressions or 0)) + 5
    assert over < discovery.settings.exposure_default_cap
    discovery.record_served([{"id": top, "item": {"kind": "profile"}}] * over)
    await discovery.served.drain()
    await _refreshed(discovery)
    assert (await discovery.recommend(v, k=3, explain=True)).ids[0] == top
    discovery.reranker = Reranker(merged_config({**weak, "pacing_cut": 1.0}))
    cut = await discovery.recommend(v, k=3, explain=True)
    assert top not in cut.ids and len(cut.ids) == 3
    assert set(cut.ids) <= set((await discovery.recommend(v, k=300, explain=True)).ids)


async def test_live_trending_from_events(discovery: Any, market: Any) -> None:
    items, _ = market
    quiet = min(
        (it for it in items if it.get("available") and it.get("popularity") is not None),
        key=lambda it: it["popularity"],
    )["_id"]
    # 15 likes within seconds: trending, and within the reply capacity of this reranker
    # (inbound_capacity 20, the window ratio: more, or the congestion-aware reply chance, would
    # make it an overloaded recipient, which the exposure and reciprocal steps demote on
    # purpose — test_congestion_aware_reciprocity_on_the_live_market)
    within = Reranker(merged_config({"inbound_capacity": 20.0, "reply_capacity": None}))
    discovery.reranker = within
    before = await discovery.trending(k=30)
    assert quiet not in before.ids[:10]
    res = await discovery.record_events(
        [event(f"fan-{uuid.uuid4().hex[:6]}", "like", quiet) for _ in range(15)]
    )
    assert res.accepted == 15, res
    await _refreshed(discovery)  # the counters are searched: near real time (~1 s)
    top = dict(await discovery.exposure.trending(10))
    assert top.get(quiet, 0) > 14.9  # 15 likes, decayed by seconds
    fresh = Discovery(discovery.settings, discovery.os, discovery.db, model=discovery.encoder.model)
    fresh.reranker = within
    after = await fresh.trending(k=30)  # a process that reads the live counts now
    plan = await fresh.plan("trending", 30)
    params = plan.request.params
    live = dict(zip(params["trending_ids"], params["trending_weights"], strict=True))
    assert live[quiet] > 14.9
    # the trending source ranks it with the items of more live likes (other tests like some)
    heads = {i for i, w in live.items() if w >= live[quiet]}
    assert quiet in (await fresh.candidates(plan)).ids[: len(heads) + 1]
    assert _rank(after, quiet) < _rank(before, quiet)
    feats = await fresh.features.lookup([quiet, before.ids[0]])
    assert feats.trending is not None and feats.trending[0] > 14.9
    col = FEATURE_NAMES.index("trending")
    batch = CandidateBatch.from_items([{"id": quiet}, {"id": before.ids[0]}])
    X = assemble_features(batch, feats, fresh.features.context(None), RerankConfig())
    # log1p of the live count, max-normalised within the batch (other tests like the head too,
    # so either row may be the maximum)
    want = np.log1p(feats.trending) / np.log1p(feats.trending).max()
    assert np.allclose(X[:, col], want) and X[:, col].max() == 1.0 and X[0, col] > 0.5
    assert np.isfinite(X).all()


async def test_congestion_aware_reciprocity_on_the_live_market(discovery: Any, market: Any) -> None:
    """With ``reply_capacity`` the reciprocal estimate reads the live like rate reaching each
    candidate (the decayed counts the events write): a member receiving far more likes than
    they answer is demoted; the step only reorders — the answer is the same eligible set."""
    _, users = market
    v = _broad(users, 4)["_id"]
    quiet = {
        "inbound_strength": 0.0,
        "exposure_strength": 0.0,
        "reciprocal_weight": 0.9,
        "inbound_capacity": 20.0,
        "reply_capacity": None,
    }
    window = Reranker(merged_config(quiet))
    congested = Reranker(merged_config({**quiet, "reply_capacity": 1.0}))
    col = FEATURE_NAMES.index("reciprocal")

    def estimate(recs: Any, item: str) -> float:
        assert recs.served is not None and recs.served.X is not None
        return float(recs.served.X[list(recs.served.ids).index(item), col])

    discovery.reranker = congested
    before = await discovery.recommend(v, k=60, explain=True)
    busy = before.ids[0]
    fans = [event(f"fan-{uuid.uuid4().hex[:6]}", "like", busy) for _ in range(30)]
    assert (await discovery.record_events(fans)).accepted == 30
    await _refreshed(discovery)
    feats = await discovery.features.lookup([busy])
    assert feats.like_rate is not None and feats.like_rate[0] > 15.0  # ~30 · ln 2 a day
    after = await discovery.recommend(v, k=60, explain=True)
    assert estimate(after, busy) < 0.2 * estimate(before, busy)
    assert _rank(after, busy) > _rank(before, busy)
    # the window ratio on the same state (30 inbound likes against inbound_capacity 20: at
    # most a 21/31 damp) does not see the live rate: the demotion is the congestion term's
    discovery.reranker = window
    plain = await discovery.recommend(v, k=60, explain=True)
    assert estimate(after, busy) < 0.2 * estimate(plain, busy)
    # only a reordering: with the whole pool asked for, the same eligible members, busy kept
    whole_plain = await discovery.recommend(v, k=300)
    discovery.reranker = congested
    whole = await discovery.recommend(v, k=300)
    assert set(whole.ids) == set(whole_plain.ids) and busy in whole.ids
    assert len(whole.ids) == len(set(whole.ids)) >= 10


async def test_without_a_viewer_the_reciprocal_terms_do_not_act(
    discovery: Any, market: Any
) -> None:
    """The serving defaults on the live market: a member receiving many fresh likes is
    congested for a member who searches (the reciprocal estimate falls), but an anonymous
    search — nobody whose like could be answered — ranks as with the reciprocal step off, the
    column 0; the exposure and pacing steps act on both."""
    items, users = market
    v = _broad(users, 5)["_id"]
    q = " ".join(next(it for it in items if it.get("available"))["tags"][:1])
    discovery.reranker = Reranker()  # the defaults: reciprocal, congestion-aware
    assert discovery.reranker.config.reply_capacity is not None
    col = FEATURE_NAMES.index("reciprocal")

    def column(recs: Any) -> np.ndarray:
        assert recs.served is not None and recs.served.X is not None
        return np.asarray(recs.served.X)[:, col]

    member_before = await discovery.search(q, user_id=v, k=60, explain=True)
    anon_before = await discovery.search(q, k=60)
    busy = next(i for i in anon_before.ids if i in member_before.ids)
    fans = [event(f"fan-{uuid.uuid4().hex[:6]}", "like", busy) for _ in range(30)]
    assert (await discovery.record_events(fans)).accepted == 30
    await _refreshed(discovery)
    member_after = await discovery.search(q, user_id=v, k=60, explain=True)
    at = {i: j for j, i in enumerate(member_before.served.ids)}
    after_at = {i: j for j, i in enumerate(member_after.served.ids)}
    assert column(member_after)[after_at[busy]] < 0.2 * column(member_before)[at[busy]]
    anon = await discovery.search(q, k=60, explain=True)
    assert busy in anon.ids and not column(anon).any()
    discovery.reranker = Reranker(merged_config({"reciprocal_mode": "off"}))
    off = await discovery.search(q, k=60, explain=True)
    assert anon.ids == off.ids
    assert [r.score for r in anon.items] == pytest.approx([r.score for r in off.items])
    # not vacuous: for the member the step does reorder the same state
    assert (await discovery.search(q, user_id=v, k=60)).ids != member_after.ids


async def test_attention_cap_on_the_live_market(discovery: Any, market: Any) -> None:
    """The controller whose setpoint is the top-1% share: measured on the live inbound
    counters, it sets a cap on a member's attention below the liked member's, and the served
    pipeline takes that member off the page — a reordering of the eligible members only."""
    try:
        _, users = market
        v = _broad(users, 6)["_id"]
        # the cap alone: the damps, the reciprocal step and the budget's demotion off
        weak = PACING_ONLY
        discovery.reranker = Reranker(merged_config(weak))
        top = (await discovery.recommend(v, k=3)).ids[0]
        fans = [event(f"fan-{uuid.uuid4().hex[:6]}", "like", top) for _ in range(40)]
        assert (await discovery.record_events(fans)).accepted == 40
        discovery.record_served([{"id": top, "item": {"kind": "profile"}}] * 3)
        await discovery.served.drain()
        await _refreshed(discovery)
        targets = PacingTargets(top1_share=0.05, attention_cap=True, cap_gain=1.0)
        ctl = PacingController(
            discovery.settings, discovery.db, discovery.exposure, targets=targets
        )
        state = await ctl.refresh(force=True)
        assert state.top1_share > 0.05 and state.attention_cap is not None
        assert state.attention_cap < 40  # below the member the 40 fans liked
        tighter = await ctl.refresh(force=True)  # still above the setpoint: the integral tightens
        assert tighter.cap_log is not None and state.cap_log is not None
        assert tighter.cap_log <= state.cap_log
        stored = await PacingController(discovery.settings, discovery.db, discovery.exposure).read()
        assert stored.attention_cap == pytest.approx(tighter.attention_cap)
        # a process that reads the live counters now (no inbound cached from before the likes)
        fresh = Discovery(
            discovery.settings, discovery.os, discovery.db, model=discovery.encoder.model
        )
        fresh.reranker = Reranker(merged_config(weak))
        fresh.pacing._read_at = float("inf")  # no background refresh in this test
        fresh.pacing.state = replace(tighter, cap_log=None)
        uncapped = await fresh.recommend(v, k=3, explain=True)
        assert uncapped.ids[0] == top
        whole = set((await fresh.recommend(v, k=300)).ids)
        fresh.pacing.state = tighter
        capped = await fresh.recommend(v, k=3, explain=True)
        assert top not in capped.ids and len(capped.ids) == 3
        assert set(capped.ids) <= whole
        # only a reordering: the whole pool is the same eligible members, `top` kept, no duplicate
        every = (await fresh.recommend(v, k=300)).ids
        assert set(every) == whole and top in every and len(every) == len(set(every))
        await fresh.drain()
    finally:
        # the stored controller state (with its attention cap) is shared by every later test
        # on this catalogue: each fresh Discovery would read it and cap members by live counts
        await discovery.db[PACING].delete_many({})


async def test_features_from_the_processs_copies_equal_the_stores(
    discovery: Any, market: Any
) -> None:
    # what the API's features read from its copies of the per-candidate signals (exposure
    # counters, inbound attention, owners' tastes) is what the stores answer
    items, users = market
    owner_of = {it["_id"]: it["owner_id"] for it in items if it.get("owner_id")}
    v = _broad(users, 3)["_id"]
    ids = (await discovery.recommend(v, k=40)).ids
    likers = [u["_id"] for u in users[10:16]]  # attention the candidates receive
    givers = [owner_of[i] for i in ids[:4] if i in owner_of]  # candidates' owners who like
    res = await discovery.record_events(
        [event(u, "like", i) for u in likers for i in ids[:5]]
        + [event(u, "pass", i) for u in likers[:3] for i in ids[5:8]]
        + [event(g, "like", i) for g in givers for i in ids[10:12]]
    )
    assert res.accepted == len(likers) * 5 + 9 + len(givers) * 2 and givers
    discovery.record_served([{"id": i, "item": {"kind": "profile"}} for i in ids[:10]])
    await discovery.served.drain()
    await _refreshed(discovery)
    owners = {i: owner_of[i] for i in ids if i in owner_of}
    assert owners, "the market's profiles have owners"
    copies = discovery.copies
    args = (discovery.settings, discovery.os, discovery.db)
    t0 = time.monotonic()
    stores = await FeatureStore(*args).lookup(ids, owners=owners)  # no copies, no cache yet
    for c in (copies.exposure, copies.inbound, copies.tastes):
        await c.refresh()
        assert c.fresh() and c.items
    copied = await FeatureStore(*args, copies=copies).lookup(ids, owners=owners)
    # paced exposure decays over the exposure window: read later, it is lower by that much
    decayed = (time.monotonic() - t0) / (discovery.settings.exposure_window_hours * 3600)
    assert stores.inbound.sum() > 0 and stores.exposure.sum() > 0
    assert stores.likes_sent is not None and stores.likes_sent.sum() > 0
    for name in ("exposure", "inbound", "taste", "likes_sent", "passes_sent", "paced_exposure"):
        a, b = getattr(stores, name), getattr(copied, name)
        rtol = 1e-6 + (decayed if name == "paced_exposure" else 0.0)
        assert a is not None and b is not None and np.allclose(a, b, rtol=rtol), name
