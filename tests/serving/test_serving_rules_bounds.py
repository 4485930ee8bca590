"""An age bound stated but holding no age (what MongoDB may hold and ingest would refuse, read
by the page's re-check and the degraded fallback): the hard rules fail closed on either side,
and the engine's parameters still render."""

from __future__ import annotations

from typing import Any

import pytest

from opendisco.queries import load
from opendisco.queries._params import validate_params
from opendisco.serving import HardRules, Rule

NO_AGE = ["forty", "", True, [40], {"years": 40}, float("inf"), float("nan")]
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
