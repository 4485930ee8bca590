"""The synthetic marketplace interaction generator (pure, seeded)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from opendisco._exceptions import InvalidInput
from opendisco.eval import resolve_dataset, synthetic_dataset, time_split


def _admits(prefs: dict, other: dict) -> bool:
    return (
        other["gender"] in prefs["pref_genders"]
        and prefs["pref_age_min"] <= other["age"] <= prefs["pref_age_max"]
    )


def test_eval_synthetic_deterministic_for_a_seed() -> None:
    a, b = synthetic_dataset(120, seed=3), synthetic_dataset(120, seed=3)
    c = synthetic_dataset(120, seed=4)
    for field in ("user_ids", "item_ids", "ratings", "timestamps"):
        assert np.array_equal(getattr(a.ratings, field), getattr(b.ratings, field))
    assert a.ratings.item_ids.tolist() != c.ratings.item_ids.tolist()


def test_eval_synthetic_only_two_sided_eligible_pairs() -> None:
    data = synthetic_dataset(200, seed=7)
    assert len(data.ratings) > 0
    for user_id, item_id in zip(data.ratings.user_ids, data.ratings.item_ids, strict=True):
        user, item = data.users[user_id], data.items[item_id]
        owner = data.users[item["owner_id"]]
        assert owner["_id"] != user_id
        assert item["available"]
        assert _admits(user, item), (user_id, item_id)
        assert _admits(owner, user), (user_id, item_id)


def test_eval_synthetic_ratings_times_and_shape() -> None:
    data = synthetic_dataset(150, seed=7, likes_per_user=6)
    assert set(data.ratings.ratings.tolist()) == {5.0}
    per_user = Counter(data.ratings.user_ids.tolist())
    assert max(per_user.values()) <= 6
    end = 1767225600  # 2026-01-01 UTC
    ts = data.ratings.timestamps
    assert ts.min() >= end - 60 * 86400 and ts.max() < end
    for user in per_user:
        t = ts[data.ratings.user_ids == user]
        assert np.all(np.diff(t) > 0)
    pairs = list(zip(data.ratings.user_ids, data.ratings.item_ids, strict=True))
    assert len(pairs) == len(set(pairs))
    # items follow the load_dataset shape, so the split and the replay take them
    doc = next(iter(data.items.values()))
    for key in ("_id", "kind", "title", "tags", "popularity", "available", "created_at"):
        assert key in doc
    split = time_split(data)
    assert split.summary()["test"] > 0 and len(split.items) == 150


def test_eval_synthetic_popularity_skew() -> None:
    data = synthetic_dataset(400, seed=7)
    counts = Counter(data.ratings.item_ids.tolist())
    received = np.array(sorted((counts.get(i, 0) for i in data.items), reverse=True))
    top_decile = received[: len(received) // 10].sum() / received.sum()
    # uniform attention would give the top 10% of profiles about 10% (plus sampling noise)
    assert top_decile > 0.25
    # the popularity prior drives it: likes received correlate with the generator's prior
    prior = np.array([data.items[i]["popularity"] for i in data.items])
    got = np.array([counts.get(i, 0) for i in data.items])
    assert np.corrcoef(np.log1p(prior), got)[0, 1] > 0.3


def test_eval_synthetic_resolve_dataset_spec() -> None:
    assert resolve_dataset("synthetic:60").name == "synthetic-60"
    with pytest.raises(InvalidInput):
        resolve_dataset("synthetic:many")
