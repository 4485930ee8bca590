"""Pure pieces of tuning and of the served-pipeline replay."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from opendisco.eval import Split, like_event
from opendisco.eval._served import stage_items
from opendisco.eval._tune import (
    SPACES,
    Dim,
    current_version,
    run_study,
    split_params,
    write_version,
)


def test_split_params_routes_template_and_rerank_names() -> None:
    template, rerank, other = split_params(
        {"template.rrf_k": 30, "rerank.mmr_lambda": 0.5, "rerank.weights.quality": 0.2, "lam": 3}
    )
    assert template == {"rrf_k": 30}
    assert rerank == {"mmr_lambda": 0.5, "weights": {"quality": 0.2}}
    assert other == {"lam": 3}
    assert all(k.startswith(("template.", "rerank.")) for k in SPACES["served"])


def test_write_version_never_overwrites(tmp_path: Path) -> None:
    assert current_version(tmp_path) == (0, None)
    p1 = write_version(tmp_path, {"value": 1.0})
    (tmp_path / "params-v3.json").write_text(json.dumps({"version": 3, "value": 3.0}))
    p4 = write_version(tmp_path, {"value": 4.0})
    assert p1.name == "params-v1.json" and p4.name == "params-v4.json"
    assert json.loads(p1.read_text()) == {"version": 1, "value": 1.0}
    assert current_version(tmp_path) == (4, {"version": 4, "value": 4.0})


def test_run_study_starts_from_the_current_parameters() -> None:
    result = run_study(
        lambda p: -((p["x"] - 2.0) ** 2), {"x": Dim(0.0, 5.0)}, trials=6, start={"x": 2.0}
    )
    assert result.trials[0]["x"] == 2.0
    assert result.current_value == 0.0 == result.best_value
    assert len(result.values) == 6


def test_like_event_is_idempotent_and_utc() -> None:
    ev = like_event("u1", "m2", 964982703)
    assert ev == like_event("u1", "m2", 964982703)
    assert ev["type"] == "like" and ev["user_id"] == "u1" and ev["item_id"] == "m2"
    assert ev["ts"] == datetime(2000, 7, 30, 18, 45, 3, tzinfo=UTC)


def test_replayed_items_carry_only_fitting_popularity(ml_split: Split, movielens: Path) -> None:
    from opendisco.eval import read_movielens

    data = read_movielens(movielens)
    stage = ml_split.stage("test")
    docs = stage_items(data, stage)
    assert len(docs) == len(stage.items)
    pop = np.array([d["popularity"] for d in docs])
    np.testing.assert_array_equal(pop, stage.item_counts)
    # a held-out test item nobody had in the fitting data has popularity 0
    cold = np.flatnonzero(stage.cold_items)
    assert cold.size and all(docs[i]["popularity"] == 0.0 for i in cold[:10])
    assert all(0.0 <= d["quality"] < 1.0 for d in docs)
    assert docs[0]["_id"] == stage.items[0]


def test_replayed_quality_does_not_saturate_on_a_larger_dataset(
    ml_split: Split, movielens: Path
) -> None:
    """The same world with every user cloned 20 times (20x the positives per item) gets the
    same replayed quality: a fixed prior of 10 put nearly every rated item at ~1 there."""
    from dataclasses import replace

    from opendisco.eval import read_movielens

    data = read_movielens(movielens)
    stage = ml_split.stage("test")
    big = replace(stage, users=np.repeat(stage.users, 20), history=stage.history * 20)
    small = np.array([d["quality"] for d in stage_items(data, stage)])
    large = np.array([d["quality"] for d in stage_items(data, big)])
    np.testing.assert_allclose(large, small, atol=1e-4)
    rated = stage.item_counts > 0
    assert (large[rated] > 0.95).mean() < 0.05  # the column still tells items apart


def test_served_adapter_is_a_recommender() -> None:
    from opendisco import Settings
    from opendisco.eval import Recommender, ServedRecommender

    assert isinstance(ServedRecommender(Settings()), Recommender)


def test_served_defaults_are_the_shipped_values_inside_the_search_space() -> None:
    from opendisco.eval._tune import served_defaults
    from opendisco.queries import load
    from opendisco.rerank import RerankConfig

    defaults = served_defaults()
    assert set(defaults) == set(SPACES["served"])
    for name, value in defaults.items():
        dim = SPACES["served"][name]
        assert dim.low <= value <= dim.high, name
    specs = load("for_you").specs
    assert defaults["template.rrf_k"] == specs["rrf_k"].default
    assert defaults["rerank.mmr_lambda"] == RerankConfig().mmr_lambda
    assert defaults["rerank.weights.quality"] == RerankConfig().weights["quality"]


def test_served_rerank_overrides_keep_the_other_default_weights() -> None:
    from opendisco import Settings
    from opendisco.eval import ServedRecommender
    from opendisco.rerank import RerankConfig

    model = ServedRecommender(Settings(), rerank={"mmr_lambda": 0.9, "weights": {"quality": 0.5}})
    config = model.artifacts.rerank
    defaults = RerankConfig()
    assert config.mmr_lambda == 0.9 and config.weights["quality"] == 0.5
    assert config.weights["fused"] == defaults.weights["fused"] > 0
    assert config.max_per_category == defaults.max_per_category
