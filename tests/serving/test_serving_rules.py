"""The hard rules (``serving/_filters.py``): the pure predicate, and its equivalence with what
the engine returns for the parameters it derives (one definition, two executions)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from opendisco import Settings, clients
from opendisco.queries import Candidate, CandidateRequest, generate_candidates, load
from opendisco.queries._params import validate_params
from opendisco.serving import (
    AGE_DOMAIN,
    CandidatePlan,
    HardRules,
    HardRulesFilter,
    Rule,
    stored_rule_fields,
)
from opendisco.signals import MemberBlocks, UserState

VIEWER = {
    "_id": "u1",
    "profile_id": "me",
    "gender": "m",
    "age": 30,
    "pref_genders": ["f"],
    "pref_age_min": 25,
    "pref_age_max": 35,
}
STATE = UserState(
    "u1",
    seen=["seen"],
    blocked=["hidden"],
    positives=[{"id": "liked", "e": "e1"}],
    negatives=[{"id": "passed", "e": "e2"}],
)
BLOCKS = MemberBlocks("u1", blocked=("u8",), blocked_by=("u9",))


def _profile(**kw: Any) -> dict[str, Any]:
    base = {
        "kind": "profile",
        "available": True,
        "gender": "f",
        "age": 30,
        "pref_genders": ["m"],
        "pref_age_min": 20,
        "pref_age_max": 40,
        "owner_id": "u2",
    }
    return {**base, **kw}


def _rules(**kw: Any) -> HardRules:
    return HardRules.for_member("u1", {**VIEWER, **kw}, STATE, BLOCKS, exclude=["shown"])


@pytest.mark.parametrize(
    ("item_id", "item", "rule"),
    [
        ("ok", _profile(), None),
        ("ok", _profile(available=False), Rule.AVAILABLE),
        ("ok", _profile(deleted=True), Rule.AVAILABLE),
        ("ok", {k: v for k, v in _profile().items() if k != "available"}, Rule.AVAILABLE),
        ("me", _profile(owner_id="u3"), Rule.SELF),
        ("ok", _profile(owner_id="u1"), Rule.SELF),
        ("hidden", _profile(), Rule.BLOCKS),
        ("ok", _profile(owner_id="u8"), Rule.BLOCKS),  # the viewer blocked u8
        ("ok", _profile(owner_id="u9"), Rule.BLOCKS),  # u9 blocked the viewer
        ("seen", _profile(), Rule.SEEN),
        ("liked", _profile(), Rule.SEEN),
        ("passed", _profile(), Rule.SEEN),
        ("shown", _profile(), Rule.SEEN),  # an earlier page of the session
        ("ok", _profile(gender="m"), Rule.ELIGIBILITY),  # viewer wants women
        ("ok", _profile(age=40), Rule.ELIGIBILITY),  # older than the viewer wants
        ("ok", _profile(age=None), Rule.ELIGIBILITY),  # age unknown: cannot confirm
        ("ok", _profile(pref_genders=["f"]), Rule.ELIGIBILITY),  # she wants women
        ("ok", _profile(pref_age_min=31), Rule.ELIGIBILITY),  # she wants older
        ("ok", _profile(pref_age_max=29), Rule.ELIGIBILITY),  # she wants younger
        ("ok", _profile(pref_genders=[], pref_age_min=None, pref_age_max=None), None),
        ("movie", {"kind": "movie", "available": True}, None),  # not a profile: no prefs
    ],
)
def test_each_rule_names_what_it_forbids(item_id: str, item: dict[str, Any], rule: Any) -> None:
    assert _rules().broken(item_id, item) == rule


def test_unknown_gender_or_age_cannot_meet_stated_preferences() -> None:
    nobody = HardRules.for_member("u5", None, None, None)
    assert nobody.member and nobody.gender is None and nobody.age is None
    assert nobody.broken("x", _profile()) is Rule.ELIGIBILITY
    stating_nothing = _profile(pref_genders=None, pref_age_min=None, pref_age_max=None)
    # no users document (deleted, never written): whom they want is unconfirmable too
    assert nobody.broken("x", stating_nothing) is Rule.ELIGIBILITY
    assert nobody.allows("m1", {"kind": "movie", "available": True})  # not a member
    assert HardRules.for_member("u5", {}, None, None).allows("x", stating_nothing)
    assert (
        nobody.admits_no_profile
        and not HardRules.for_member("u5", {}, None, None).admits_no_profile
    )
    assert HardRules.for_member(
        "u5", {"pref_age_min": 40, "pref_age_max": 30}, None, None
    ).admits_no_profile
    assert not HardRules.anonymous().admits_no_profile
    # an empty answer is the answer only where every item is (or may be) a profile: a
    # degraded page out of a catalogue with movies is no answer when all were filtered
    assert nobody.admits_none_of([_profile(), {"kind": None}, {"kind": "Profile"}])
    assert not nobody.admits_none_of([_profile(), {"kind": "movie"}])
    assert not HardRules.for_member("u5", {}, None, None).admits_none_of([_profile()])
    ageless = _rules(age=None)
    assert ageless.broken("x", _profile()) is Rule.ELIGIBILITY
    assert ageless.allows("x", _profile(pref_age_min=None, pref_age_max=None))


def test_anonymous_rules_check_availability_exclusions_and_caps_only() -> None:
    anon = HardRules.anonymous(["anchor"]).with_capped(["capped"])
    assert not anon.member
    assert anon.allows("x", _profile(gender="m", owner_id="u9"))
    assert anon.broken("anchor", _profile()) is Rule.SEEN
    assert anon.broken("capped", _profile()) is Rule.EXPOSURE_CAP
    assert anon.broken("x", _profile(available=False)) is Rule.AVAILABLE
    assert anon.engine_params()["viewer_gender_unknown"] is False


def test_engine_params_carry_every_rule() -> None:
    p = _rules().engine_params()
    assert p["exclude_ids"] == sorted(["me", "hidden", "seen", "liked", "passed", "shown"])
    assert p["viewer_id"] == "u1" and p["exclude_owners"] == ["u8", "u9"]
    assert (p["viewer_gender"], p["viewer_age"]) == ("m", 30)
    assert p["viewer_pref_genders"] == ["f"]
    assert (p["viewer_pref_age_min"], p["viewer_pref_age_max"]) == (25, 35)
    assert not p["viewer_gender_unknown"] and not p["viewer_age_unknown"]
    unknown = HardRules.for_member("u5", {}, None, None).engine_params()
    assert unknown["viewer_gender_unknown"] and unknown["viewer_age_unknown"]


#: members whose stored documents hold values outside the templates' parameter domain
ODD_VIEWERS = {
    "age 200": {"_id": "o1", "gender": "m", "age": 200, "pref_age_min": 20},
    "negative age": {"_id": "o2", "gender": "f", "age": -4},
    "infinite age": {"_id": "o3", "gender": "x", "age": float("inf"), "pref_genders": ["m"]},
    "prefs past the domain": {"_id": "o4", "age": 30, "pref_age_min": 200, "pref_age_max": 900},
    "prefs below it": {"_id": "o5", "age": 30, "pref_age_min": -9, "pref_age_max": -1},
    "long gender": {"_id": "o6", "gender": "g" * 100, "age": 30, "pref_genders": ["f" * 65]},
    "many genders": {"_id": "o0", "age": 40, "pref_genders": [f"g{i}" for i in range(40)]},
    "scalar genders": {"_id": "o2", "gender": 7, "age": 22, "pref_genders": 5},
    "astronomical bounds": {"_id": "o5", "age": 30, "pref_age_min": 1e300, "pref_age_max": 1e301},
}


def test_age_domain_is_the_templates_parameter_domain() -> None:
    for surface in ("for_you", "trending", "cold_start", "similar", "search"):
        specs = load(surface).specs
        for name in ("viewer_age", "viewer_pref_age_min", "viewer_pref_age_max"):
            assert (specs[name].min, specs[name].max) == AGE_DOMAIN, (surface, name)


@pytest.mark.parametrize("viewer", list(ODD_VIEWERS))
def test_odd_stored_members_render_instead_of_failing_the_request(viewer: str) -> None:
    """A member's odd stored values are not the caller's input: the request renders (no
    422), the viewer's out-of-domain age or gender is unknown to the engine (fail closed)."""
    user = ODD_VIEWERS[viewer]
    params = HardRules.for_member(str(user["_id"]), user, None, None).engine_params()
    specs = load("for_you").specs
    validate_params(specs, {k: v for k, v in params.items() if k in specs}, "for_you")
    if not (isinstance(user.get("age"), int) and 0 <= user["age"] <= 150):
        assert params["viewer_age"] is None and params["viewer_age_unknown"] is True


def test_stored_items_get_the_ingest_defaults() -> None:
    got = stored_rule_fields({"_id": "a", "kind": "profile", "title": "t"})
    assert got["available"] is True and got["deleted"] is False
    assert got["exposure_cap"] is None  # none of its own: the default cap (item_cap)
    assert stored_rule_fields({"available": False})["available"] is False


def test_a_stored_cap_ingest_would_refuse_leaves_the_engines_cap() -> None:
    """The page's caps check and the fallback take the stored ``exposure_cap`` over the hit's:
    one ingest refuses (a word, a negative, a fraction) was read as no cap of its own, so the
    default cap of 200 replaced the engine's copy of the last valid cap (3)."""
    assert stored_rule_fields({"exposure_cap": 3.0})["exposure_cap"] == 3
    for bad in ("3", -1, 2.5, True, [3], 2**31):
        assert "exposure_cap" not in stored_rule_fields({"exposure_cap": bad}), bad
    hit = {"exposure_cap": 3}
    assert {**hit, **stored_rule_fields({"exposure_cap": "3"})}["exposure_cap"] == 3


def test_filter_stage_drops_and_counts_what_the_engine_should_not_have_returned() -> None:
    plan = CandidatePlan("for_you", 10, user_id="u1")
    plan.rules = _rules()
    cands = [
        Candidate(id=i, sources={}, ranks={}, fused=1.0, item=item)
        for i, item in [
            ("ok", _profile()),
            ("me", _profile()),
            ("x", _profile(owner_id="u9")),
            ("y", _profile(gender="m")),
        ]
    ]
    kept = HardRulesFilter().keep(plan, cands)
    assert [c.id for c in kept] == ["ok"]
    assert plan.filtered == {"self": 1, "blocks": 1, "eligibility": 1}


# --- one definition, two executions: the engine returns exactly what the predicate allows --

GENDERS = ("f", "m", "x", None)
AGES = (None, 22, 30, 45)
PREF_GENDERS: tuple[list[str] | None, ...] = (None, ["f"], ["m"], ["f", "x"])
PREF_AGES = ((None, None), (25, 35), (40, None), (None, 28))


def _combinations() -> list[dict[str, Any]]:
    docs = []
    combos = itertools.product(GENDERS, AGES, PREF_GENDERS, PREF_AGES, ("profile", "movie"))
    for n, (g, age, pg, (lo, hi), kind) in enumerate(combos):
        doc: dict[str, Any] = {
            "id": f"c{n}",
            "kind": kind,
            "title": f"combination {n}",
            "available": n % 17 != 0,
            "owner_id": f"o{n % 7}",
            "popularity": float(n % 50),
            "created_at": "2026-01-01T00:00:00Z",
        }
        for key, value in (
            ("gender", g),
            ("age", age),
            ("pref_genders", pg),
            ("pref_age_min", lo),
            ("pref_age_max", hi),
        ):
            if value is not None:
                doc[key] = value
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def rules_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"index_alias": f"{settings.index_alias}-rules"})


@pytest.fixture(scope="module")
def combinations(rules_settings: Settings, index_items: Any) -> list[dict[str, Any]]:
    docs = _combinations()
    index_items(rules_settings, docs)
    return docs


VIEWERS = {
    "member": ({**VIEWER, "_id": "o1", "profile_id": "c3"}, ["c10", "c11"], ("o2",), ("o4",)),
    "unknown": ({"_id": "o5"}, [], (), ()),
    "ageless": ({"_id": "o6", "gender": "f", "pref_genders": ["m", "x"]}, [], (), ("o3",)),
    "older": ({"_id": "o0", "gender": "x", "age": 45, "pref_age_min": 40}, [], (), ()),
}


async def _trending(settings: Settings, rules: HardRules) -> list[Candidate]:
    """What the engine returns on the trending surface for the rules' parameters alone."""
    req = CandidateRequest(
        surface="trending",
        k=1000,
        now=datetime(2026, 1, 2, tzinfo=UTC),
        params=rules.engine_params(),
        exposure_caps=False,
    )
    client = clients.async_opensearch(settings)
    try:
        return (await generate_candidates(client, settings, req)).candidates
    finally:
        await client.close()


@pytest.mark.parametrize("viewer", [*VIEWERS, "anonymous"])
async def test_engine_returns_exactly_what_the_rules_allow(
    viewer: str, rules_settings: Settings, combinations: list[dict[str, Any]]
) -> None:
    if viewer == "anonymous":
        rules = HardRules.anonymous(["c1", "c2"])
    else:
        user, seen, blocked, blocked_by = VIEWERS[viewer]
        state = UserState(user["_id"], seen=seen)
        blocks = MemberBlocks(user["_id"], blocked=blocked, blocked_by=blocked_by)
        rules = HardRules.for_member(user["_id"], user, state, blocks)
    got = {c.id for c in await _trending(rules_settings, rules)}
    want = {d["id"] for d in combinations if rules.allows(d["id"], d)}
    assert want, "the viewer must be allowed something, or the comparison proves little"
    assert len(want) < len(combinations)
    assert got == want, (sorted(got - want)[:10], sorted(want - got)[:10])


@pytest.mark.parametrize("viewer", list(VIEWERS))
async def test_two_sided_sources_return_only_what_the_rules_allow(
    viewer: str, rules_settings: Settings, combinations: list[dict[str, Any]]
) -> None:
    """The likers (for_you and cold_start), friends-of-matches, live-trending, item-graph and
    item-item (issue 15) paths propose members by id or owner — every one of them among the
    ids — and still return exactly what the rules allow: a liker the viewer blocked, who
    blocked the viewer, or whose preferences exclude the viewer is never a candidate,
    whatever proposed it."""
    user, seen, blocked, blocked_by = VIEWERS[viewer]
    state = UserState(user["_id"], seen=seen)
    blocks = MemberBlocks(user["_id"], blocked=blocked, blocked_by=blocked_by)
    rules = HardRules.for_member(user["_id"], user, state, blocks)
    ids = [d["id"] for d in combinations]
    mutual = ids[: len(ids) // 2]  # within the source's 500-id limit
    rest = ids[len(ids) // 2 :][:500]  # the item-graph and item-item neighbour sources
    owners = sorted({d["owner_id"] for d in combinations})  # every owner liked the viewer
    params = {
        **rules.engine_params(),
        "liker_ids": owners,
        "mutual_ids": mutual,
        "mutual_weights": [1.0 + i % 5 for i in range(len(mutual))],
        "trending_ids": ids,
        "trending_weights": [float(1 + i % 9) for i in range(len(ids))],
        "graph_ids": rest,
        "graph_weights": [1.0 + i % 3 for i in range(len(rest))],
        "itemsim_ids": rest,
        "itemsim_weights": [0.5 + i % 4 for i in range(len(rest))],
    }
    now = datetime(2026, 1, 2, tzinfo=UTC)
    client = clients.async_opensearch(rules_settings)
    try:
        cs = await generate_candidates(
            client,
            rules_settings,
            CandidateRequest(
                surface="for_you", k=1000, now=now, params=params, exposure_caps=False
            ),
        )
        trending = await generate_candidates(
            client,
            rules_settings,
            CandidateRequest(
                surface="trending",
                k=1000,
                now=now,
                params={
                    k: v
                    for k, v in params.items()
                    if not k.startswith(("liker", "mutual", "graph", "itemsim"))
                },
                exposure_caps=False,
            ),
        )
        cold = await generate_candidates(
            client,
            rules_settings,
            CandidateRequest(
                surface="cold_start",
                k=1000,
                now=now,
                params={
                    k: v
                    for k, v in params.items()
                    if not k.startswith(("mutual", "graph", "itemsim"))
                },
                exposure_caps=False,
            ),
        )
    finally:
        await client.close()
    assert not cs.errors and not trending.errors and not cold.errors
    cold_likers = {c.id for c in cold.candidates if "likers" in c.sources}
    allowed = {d["id"] for d in combinations if rules.allows(d["id"], d)}
    by_source: dict[str, set[str]] = {}
    for c in cs.candidates:
        for s in c.sources:
            by_source.setdefault(s, set()).add(c.id)
    profiles = {d["id"] for d in combinations if d["kind"] == "profile"}
    assert by_source.get("likers", set()) == allowed & profiles == cold_likers
    assert {c.id for c in cold.candidates} <= allowed
    assert by_source.get("mutual", set()) == allowed & set(mutual)
    assert by_source.get("graph", set()) == allowed & set(rest)
    assert by_source.get("itemsim", set()) == allowed & set(rest)
    assert {c.id for c in cs.candidates} <= allowed
    assert {c.id for c in trending.candidates} == allowed
    # the comparison proves something: the proposals included forbidden members
    assert set(mutual) - allowed and profiles - allowed and set(rest) - allowed


@pytest.mark.parametrize("viewer", list(ODD_VIEWERS))
async def test_odd_stored_members_are_served_only_what_the_rules_allow(
    viewer: str, rules_settings: Settings, combinations: list[dict[str, Any]]
) -> None:
    """Engine then the in-process filter, as served: every candidate left is one the exact
    stored values allow (the engine's clamped bounds may admit more; the filter removes it)."""
    user = ODD_VIEWERS[viewer]
    rules = HardRules.for_member(str(user["_id"]), user, None, None)
    cands = await _trending(rules_settings, rules)
    plan = CandidatePlan("trending", 1000, user_id=str(user["_id"]))
    plan.rules = rules
    served = {c.id for c in HardRulesFilter().keep(plan, cands)}
    want = {d["id"] for d in combinations if rules.allows(d["id"], d)}
    assert served <= want, sorted(served - want)[:10]
    assert served, "something must be allowed, or the check proves little"
