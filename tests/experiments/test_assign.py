"""Assignment is a pure function: SHA-256 buckets, layers, holdout, designs; experiment
documents validate what a design allows, and no arm overrides the hard rules."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from opendisco.experiments import Experiment, arm_index, bucket, candidate_arm, viewer_assignment
from opendisco.experiments._assign import BUCKETS, in_experiment, is_held_out, period_of
from opendisco.experiments._model import Arm
from opendisco.experiments._serving import arm_artifacts
from opendisco.experiments._store import free_offset
from opendisco.queries import REQUEST_PARAMS
from opendisco.serving import Artifacts, params_for

ARMS = [{"name": "control"}, {"name": "treatment", "rerank": {"weights": {"popularity": 1.0}}}]


def _exp(**kw: object) -> Experiment:
    base: dict[str, object] = {"id": "e1", "arms": ARMS, "offset": 0}
    base.update(kw)
    return Experiment.model_validate(base)


def test_bucket_is_sha256_of_salt_and_unit() -> None:
    digest = hashlib.sha256(b"salt\x1fu42").digest()
    assert bucket("salt", "u42") == int.from_bytes(digest[:8], "big") % 10_000
    assert bucket("salt", "u42") != bucket("salt2", "u42") or bucket("salt", "u43") != bucket(
        "salt2", "u43"
    )


def test_bucket_never_uses_python_hash() -> None:
    """Python's hash() is salted per process; the bucket is the SHA-256 formula above, the
    same in every process, and never calls hash()."""
    from unittest import mock

    expected = [bucket("s", f"u{i}") for i in range(20)]
    with mock.patch("builtins.hash", side_effect=AssertionError("hash() used")):
        got = [bucket("s", f"u{i}") for i in range(20)]
    assert got == expected


def test_arm_shares_within_half_a_percent() -> None:
    """(bench/experiments.py checks 1M ids; 200k here keeps the suite fast.)"""
    exp = _exp(arms=[{"name": "a", "weight": 1}, {"name": "b", "weight": 1}])
    counts = np.bincount([arm_index(exp, f"member-{i}") for i in range(200_000)], minlength=2)
    assert np.abs(counts / 200_000 - 0.5).max() <= 0.005
    uneven = _exp(arms=[{"name": "a", "weight": 9}, {"name": "b", "weight": 1}])
    share = np.mean([arm_index(uneven, f"m{i}") for i in range(100_000)])
    assert abs(share - 0.1) <= 0.005


def test_layers_exclusive_within_orthogonal_across() -> None:
    ids = [f"m{i}" for i in range(20_000)]
    a = _exp(id="a", layer="L1", traffic=0.5, offset=0)
    b = _exp(id="b", layer="L1", traffic=0.5, offset=5000)
    c = _exp(id="c", layer="L2", traffic=1.0, offset=0)
    in_a = np.array([in_experiment(a, m) for m in ids])
    in_b = np.array([in_experiment(b, m) for m in ids])
    assert not (in_a & in_b).any() and (in_a | in_b).all()
    assert abs(in_a.mean() - 0.5) < 0.02
    # the arm in L2 is independent of the membership (and arm) in L1
    arm_c = np.array([arm_index(c, m) for m in ids])
    arm_a = np.array([arm_index(a, m) for m in ids])
    table = np.array([[np.sum(in_a & (arm_c == j) & (arm_a == i)) for j in (0, 1)] for i in (0, 1)])
    assert stats.chi2_contingency(table).pvalue > 0.001


def test_holdout_share_and_stability() -> None:
    ids = [f"m{i}" for i in range(50_000)]
    held = np.array([is_held_out(m, 0.02, "holdout") for m in ids])
    assert abs(held.mean() - 0.02) < 0.003
    assert not any(is_held_out(m, 0.0, "holdout") for m in ids[:100])
    assert held[:100].tolist() == [is_held_out(m, 0.02, "holdout") for m in ids[:100]]


def test_two_sided_sides_are_independent() -> None:
    exp = _exp(design={"kind": "two_sided", "candidate_share": 0.3})
    ids = [f"m{i}" for i in range(30_000)]
    at = datetime(2026, 1, 1, tzinfo=UTC)
    v = np.array([viewer_assignment(exp, m, at=at).arm == "treatment" for m in ids])
    c = np.array([candidate_arm(exp, m) for m in ids])
    assert abs(c.mean() - 0.3) < 0.015 and abs(v.mean() - 0.5) < 0.015
    table = np.array([[np.sum((v == i) & (c == j)) for j in (0, 1)] for i in (0, 1)])
    assert stats.chi2_contingency(table).pvalue > 0.001


def test_cluster_and_switchback_units() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    exp = _exp(design={"kind": "cluster"})
    a = viewer_assignment(exp, "m1", at=at, clusters={"m1": "c7", "m2": "c7"})
    b = viewer_assignment(exp, "m2", at=at, clusters={"m1": "c7", "m2": "c7"})
    assert a.unit == b.unit == "cluster:c7" and a.arm == b.arm and a.cluster == "c7"
    assert viewer_assignment(exp, "new", at=at, clusters={}).unit == "cluster:new:new"
    sw = _exp(design={"kind": "switchback", "period_minutes": 60, "burn_in_minutes": 10}, start=at)
    assert period_of(sw, at + timedelta(minutes=5)) == (0, True)
    assert period_of(sw, at + timedelta(minutes=65)) == (1, True)
    assert period_of(sw, at + timedelta(minutes=135)) == (2, False)
    r = viewer_assignment(sw, "m1", at=at + timedelta(minutes=135), region="berlin")
    assert (r.unit, r.period, r.burn_in) == ("switchback:berlin:2", 2, False)
    arms = {
        viewer_assignment(sw, f"m{i}", at=at + timedelta(minutes=135), region="berlin").arm
        for i in range(50)
    }
    assert len(arms) == 1  # the whole region-period shares one arm


def test_free_offset() -> None:
    assert free_offset(5000, []) == 0
    assert free_offset(5000, [(0, 5000)]) == 5000
    assert free_offset(3000, [(0, 2000), (5000, 5000)]) == 2000
    assert free_offset(6000, [(0, 5000)]) is None
    assert free_offset(1, [(0, 10_000)]) is None
    assert BUCKETS == 10_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "design": {"kind": "two_sided"},
                "arms": [{"name": "a"}, {"name": "b", "params": {"w_geo": 1.0}}],
            },
            "change template params",
        ),
        # the hard rules: no arm overrides what every request sets (exclusions, preferences)
        ({"arms": [{"name": "a"}, {"name": "b", "params": {"exclude_ids": []}}]}, "exclude_ids"),
        (
            {"arms": [{"name": "a"}, {"name": "b", "params": {"for_you": {"viewer_age": None}}}]},
            "cannot be overridden",
        ),
        ({"arms": [{"name": "a"}, {"name": "b", "params": {"nope": 1}}]}, "no template declares"),
        ({"arms": [{"name": "a"}, {"name": "b", "rerank": {"weights": "x"}}]}, "invalid rerank"),
        (
            {"design": {"kind": "item"}, "arms": [{"name": "a"}, {"name": "b"}, {"name": "c"}]},
            "exactly two arms",
        ),
        ({"design": {"kind": "cluster"}, "traffic": 0.5}, "traffic must be 1"),
        (
            {"design": {"kind": "switchback", "period_minutes": 60, "burn_in_minutes": 60}},
            "burn_in_minutes",
        ),
        ({"metrics": ["revenue"]}, "unknown metric"),
        ({"arms": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"arms": [{"name": "a"}]}, "at least 2"),
    ],
)
def test_experiment_validation(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _exp(**change)


def test_experiment_document_round_trip() -> None:
    exp = _exp(design={"kind": "two_sided", "candidate_share": 0.4})
    assert exp.salt == "e1"  # the id when not given
    assert Experiment.from_doc(exp.to_doc()) == exp
    assert exp.to_doc()["_id"] == "e1"


@pytest.mark.parametrize(
    "design",
    [
        {"kind": "cluster", "resolution": 0.005},
        {"kind": "cluster", "strata": 200_000},
        {"kind": "two_sided", "tsri_k": 50.0},
    ],
)
def test_a_stored_design_past_a_later_bound_stays_readable(design: dict[str, object]) -> None:
    """The design bounds hold at create; an experiment stored before them is read as stored
    (unreadable, a running experiment's members would leave their arms mid-experiment)."""
    traffic = {"traffic": 1.0} if design["kind"] == "cluster" else {}
    stored = {"_id": "e1", "arms": ARMS, "offset": 0, "design": design, **traffic}
    with pytest.raises(ValidationError, match="must be within"):
        _exp(design=design, **traffic)
    field = next(k for k in design if k != "kind")
    assert getattr(Experiment.from_doc(stored).design, field) == design[field]


def test_no_arm_reaches_the_hard_rule_parameters() -> None:
    """Defence in depth: an arm that skipped validation (built in code, or a stored document
    from an older version) still cannot override what every request sets — the served
    template parameters never carry its exclusions or viewer preferences."""
    forbidden = {"exclude_ids": [], "viewer_id": None, "exposure_index": None}
    nested = {"for_you": {"viewer_pref_genders": [], "viewer_age": None, "w_quality": 2.0}}
    arm = Arm.model_construct(
        name="b", weight=1.0, params={**forbidden, **nested, "w_geo": 1.0}, rerank={}, model=None
    )
    art = arm_artifacts(Artifacts(), _exp(), arm)
    assert params_for(art.params, "for_you") == {"w_geo": 1.0, "w_quality": 2.0}
    assert not set(params_for(art.params, "cold_start")) & REQUEST_PARAMS


def test_a_request_before_the_start_is_in_the_first_period() -> None:
    """An API host whose clock lags the host that started a switchback serves it before its
    start: that is period 0 (burn-in included), the unit every other host serves and the
    readout counts — before, period -1, an arm of its own for the lag's length."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    sw = _exp(design={"kind": "switchback", "period_minutes": 60, "burn_in_minutes": 10}, start=at)
    early = viewer_assignment(sw, "m1", at=at - timedelta(seconds=2), region="berlin")
    assert (early.unit, early.period, early.burn_in) == ("switchback:berlin:0", 0, True)
    assert early.arm == viewer_assignment(sw, "m1", at=at, region="berlin").arm
