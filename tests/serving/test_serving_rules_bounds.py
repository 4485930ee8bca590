"""An age bound stated but holding no age, a gender preference naming no gender, a deletion
flag other than false (what MongoDB may hold and ingest would refuse, read by the page's
re-check and the degraded fallback): the hard rules fail closed on either side, and the
engine's parameters still render. Ids a member's blocks or state hold alone are that id;
unreadable ones fail the read."""

from __future__ import annotations

from typing import Any

import pytest

from opendisco import StoreBackendError
from opendisco.queries import load
from opendisco.queries._params import validate_params
from opendisco.serving import (
    HardRules,
    Recommendation,
    Recommendations,
    Rule,
    stored_rule_fields,
)
from opendisco.serving._filters import NO_GENDER
from opendisco.signals import MemberBlocks, UserState

#: a fraction too (ingest refuses one: 30.5 read as 30 admitted a member of 30 past a bound
#: of 30.5, 29.5 as 29 one of 29 past a bound of 29.5)
NO_AGE = ["forty", "", True, [40], {"years": 40}, float("inf"), float("nan"), 29.5, 30.5]
VIEWER = {"_id": "u1", "gender": "m", "age": 30, "pref_genders": ["f"]}
PROFILE = {"kind": "profile", "available": True, "gender": "f", "age": 30, "owner_id": "u2"}


@pytest.mark.parametrize("value", NO_AGE, ids=repr)
@pytest.mark.parametrize("field", ["pref_age_min", "pref_age_max"])
def test_a_profile_bound_holding_no_age_admits_nobody(field: str, value: Any) -> None:
    rules = HardRules.for_member("u1", VIEWER, None, None)
    assert rules.allows("p", PROFILE)  # not vacuous
    assert rules.broken("p", {**PROFILE, field: value}) is Rule.ELIGIBILITY
    assert rules.allows("p", {**PROFILE, field: None})  # none stated: no bound


@pytest.mark.parametrize("value", NO_AGE, ids=repr)
@pytest.mark.parametrize("field", ["pref_age_min", "pref_age_max"])
def test_a_viewer_bound_holding_no_age_admits_no_profile(field: str, value: Any) -> None:
    rules = HardRules.for_member("u1", {**VIEWER, field: value}, None, None)
    assert rules.broken("p", PROFILE) is Rule.ELIGIBILITY
    assert rules.allows("m", {"kind": "movie", "available": True})  # not a profile
    params = rules.engine_params()
    specs = load("for_you").specs
    validate_params(specs, {k: v for k, v in params.items() if k in specs}, "for_you")
    # the engine gets the bound nearest to none (the domain's edge); the filter keeps it exact
    assert params[f"viewer_{field}"] == (150 if field == "pref_age_min" else 0)


@pytest.mark.parametrize("age", [35.5, 24.5, 30.5], ids=repr)
def test_a_fractional_age_is_no_age_either_side(age: float) -> None:
    """A member's own age stored as a fraction is unknown, not truncated: V wants 25-35 (a
    profile of 35.5 read as 35 was shown to V), a profile wants 25-30 (a viewer of 30.5 read
    as 30 was shown it)."""
    viewer = {**VIEWER, "pref_age_min": 25, "pref_age_max": 35}
    rules = HardRules.for_member("u1", viewer, None, None)
    assert rules.allows("p", {**PROFILE, "age": 30.0})  # a whole double is that age
    assert rules.broken("p", {**PROFILE, "age": age}) is Rule.ELIGIBILITY
    wants = {**PROFILE, "pref_age_min": 25, "pref_age_max": 30}
    assert HardRules.for_member("u1", {**viewer, "age": 30.0}, None, None).allows("p", wants)
    odd = HardRules.for_member("u1", {**viewer, "age": age}, None, None)
    assert odd.broken("p", wants) is Rule.ELIGIBILITY
    assert odd.allows("p", PROFILE)  # states no age bound: the viewer's age is not asked
    assert odd.engine_params()["viewer_age_unknown"] is True


NO_GENDER_NAMED = ["", [None], [1], [""], 7, True, {"g": "m"}]


@pytest.mark.parametrize("value", NO_GENDER_NAMED, ids=repr)
def test_a_gender_preference_naming_no_gender_admits_nobody(value: Any) -> None:
    rules = HardRules.for_member("u1", VIEWER, None, None)
    wants_m = {**PROFILE, "pref_genders": ["m"]}
    assert rules.allows("p", wants_m)  # not vacuous
    assert rules.broken("p", {**PROFILE, "pref_genders": value}) is Rule.ELIGIBILITY
    for none in (None, []):  # none stated: no preference
        assert rules.allows("p", {**PROFILE, "pref_genders": none})
    assert rules.allows("p", {**PROFILE, "pref_genders": "m"})  # one gender, stored alone
    viewer = HardRules.for_member("u1", {**VIEWER, "pref_genders": value}, None, None)
    assert viewer.broken("p", wants_m) is Rule.ELIGIBILITY
    assert viewer.allows("m", {"kind": "movie", "available": True})  # not a profile
    params = viewer.engine_params()
    specs = load("for_you").specs
    validate_params(specs, {k: v for k, v in params.items() if k in specs}, "for_you")
    assert params["viewer_pref_genders"] == [NO_GENDER]  # a gender no profile has
    # a profile whose gender is the marker itself is no gender either
    assert not viewer.allows("p", {**wants_m, "gender": NO_GENDER})


@pytest.mark.parametrize("value", [0, "", [], {}, "false", 1])
def test_a_stored_deletion_flag_other_than_false_deletes(value: Any) -> None:
    rules = HardRules.for_member("u1", VIEWER, None, None)
    assert rules.allows("p", stored_rule_fields({**PROFILE, "deleted": False}))
    assert rules.allows("p", stored_rule_fields(PROFILE))  # none stated
    assert rules.broken("p", stored_rule_fields({**PROFILE, "deleted": value})) is Rule.AVAILABLE


def test_ids_stored_alone_are_one_id_and_unreadable_ones_fail_the_read() -> None:
    blocks = MemberBlocks.from_doc("u1", {"blocked": "sb", "blocked_by": 42})
    assert blocks.either_way == {"sb", "42"}  # not {"s", "b"}
    state = UserState.from_doc({"_id": "u1", "seen": "p9", "liked": ["p1", 2], "blocked": None})
    assert (state.seen, state.liked, state.blocked) == (["p9"], ["p1", "2"], [])
    for odd in ({"sb": 1}, True, ["sb", {"id": "x"}], 1.5):
        with pytest.raises(StoreBackendError) as err:  # the API degrades, its fallback 503s
            MemberBlocks.from_doc("u1", {"blocked_by": odd})
        assert "sb" not in str(err.value)  # who blocked the member: never in an answer
    # a writer's read (it rewrites the document): every id found, blocking more, never less
    salvaged = MemberBlocks.from_doc("u1", {"blocked_by": ["sb", {"id": "x"}]}, salvage=True)
    assert salvaged.blocked_by == ("sb", "id", "x")
    assert MemberBlocks.from_doc("u1", {"blocked": {"sb": 1.5}}, salvage=True).blocked == ("sb",)
    odd_state = {"_id": "u1", "seen": [["p1"], True], "liked": {"p2": None}}
    state = UserState.from_doc(odd_state, salvage=True)
    assert (state.seen, state.liked) == (["p1"], ["p2"])


@pytest.mark.parametrize("kind", [None, "Profile", ["profile"], {"k": 1}, 3])
def test_a_kind_stored_as_none_of_the_kinds_is_checked_as_a_profile(kind: Any) -> None:
    rules = HardRules.for_member("u1", VIEWER, None, None)
    assert rules.allows("m", {**PROFILE, "kind": "movie", "gender": "m"})  # not vacuous
    assert rules.broken("p", {**PROFILE, "kind": kind, "gender": "m"}) is Rule.ELIGIBILITY
    assert rules.allows("p", {**PROFILE, "kind": kind})


@pytest.mark.parametrize("owner", [["u2"], {"id": "u2"}, 2.0, True])
def test_an_owner_stored_as_no_id_is_not_confirmed_unblocked(owner: Any) -> None:
    rules = HardRules.for_member("u1", VIEWER, None, MemberBlocks("u1", blocked=("42",)))
    assert rules.broken("p", {**PROFILE, "owner_id": 42}) is Rule.BLOCKS  # an int is its digits
    assert rules.broken("p", {**PROFILE, "owner_id": owner}) is Rule.BLOCKS
    assert HardRules.anonymous().allows("p", {**PROFILE, "owner_id": owner})  # no member


def test_an_answer_names_no_experiment_candidate_it_does_not_show() -> None:
    """Every answer (served, degraded, the CLI's: with or without the experiment log) names
    in ``experiments[].candidates`` the members it shows, no other: the ranking's top k may
    hold members the page's re-check dropped."""
    shown = [Recommendation(id=i, score=1.0, sources={}, item={}) for i in ("a", "c")]
    record = {"experiment": "e", "arm": "boost", "candidates": {"a": "boost", "b": "control"}}
    recs = Recommendations(shown, False, "v", "for_you", experiments=[record])
    assert recs.experiments[0]["candidates"] == {"a": "boost"}


def test_a_gender_preference_the_engine_cannot_take_admits_no_gender_there() -> None:
    """A viewer whose stated genders are all longer than the templates' parameter takes: the
    engine's half still admits nobody (dropped, the preference read as none: the engine
    returned profiles of every gender for the filters stage to drop — 29 of 95 in the
    fixture catalogue)."""
    long_only = HardRules.for_member("u1", {**VIEWER, "pref_genders": ["m" * 65]}, None, None)
    assert long_only.broken("p", {**PROFILE, "gender": "m"}) is Rule.ELIGIBILITY
    assert long_only.engine_params()["viewer_pref_genders"] == [NO_GENDER]
    mixed = HardRules.for_member("u1", {**VIEWER, "pref_genders": ["m" * 65, "f"]}, None, None)
    assert mixed.engine_params()["viewer_pref_genders"] == ["f"]  # what fits is kept
    none = HardRules.for_member("u1", {**VIEWER, "pref_genders": []}, None, None)
    assert none.engine_params()["viewer_pref_genders"] == []  # no preference: every gender
