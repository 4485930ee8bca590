"""Learning to rank from logged lists: the outcome join, training with a time split, the
versioned model and its schema check (pure, no servers)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from served_lists import served_list

from opendisco import ConfigError
from opendisco.rerank import (
    FEATURE_NAMES,
    CandidateBatch,
    Features,
    LabelPolicy,
    LearnedScorer,
    RerankConfig,
    Reranker,
    align_features,
    join_outcomes,
    ndcg_at,
    save_model,
    split_outcomes,
    train_lambdamart,
    train_ltr,
)
from opendisco.signals._served_list import decode_list, encode_list

T0 = datetime(2026, 1, 10, tzinfo=UTC)
F = len(FEATURE_NAMES)


def _list(rid: str, user: str, ids: list[str], at: datetime, X: Any = None) -> dict[str, Any]:
    return {
        "_id": rid,
        "at": at,
        "user_id": user,
        "ids": ids,
        "shown": [0, 1],
        "features": list(FEATURE_NAMES),
        "X": np.zeros((len(ids), F)) if X is None else X,
    }


def _ev(kind: str, user: str, item: str, at: datetime, rid: str | None = None) -> dict[str, Any]:
    return {"type": kind, "user_id": user, "item_id": item, "ts": at, "request_id": rid}


def test_join_labels_by_the_strongest_outcome_inside_the_window() -> None:
    lists = [
        _list("r1", "u1", ["a", "b", "c", "d"], T0),
        _list("r2", "u2", ["a", "b"], T0),  # no outcome: dropped
        _list("r3", "u1", ["e", "f"], T0 + timedelta(hours=1)),
    ]
    events = [
        _ev("like", "u1", "b", T0 + timedelta(hours=2)),
        _ev("match", "u1", "b", T0 + timedelta(hours=3)),  # strongest wins: match
        _ev("like", "u1", "c", T0 + timedelta(hours=500)),  # outside the 168 h window
        _ev("like", "u1", "d", T0 - timedelta(hours=1)),  # before the list
        _ev("pass", "u1", "a", T0 + timedelta(hours=1)),  # explicit zero
        _ev("message", "u1", "f", T0 + timedelta(days=60), rid="r3"),  # names the list
        _ev("like", "u2", "b", T0 - timedelta(days=1)),
    ]
    data = join_outcomes(lists, events)
    assert data.list_ids == ["r1", "r3"] and data.groups.tolist() == [4, 2]
    assert data.y.tolist() == [0, 4, 0, 0, 0, 3]
    assert data.skipped["no_positive"] == 1
    # logged order: shown rows first, then the others
    assert data.logged_rank.tolist() == [0, 1, 2, 3, 0, 1]
    # scope "shown": c/d are not shown in r1 (shown = rows 0, 1), b is
    shown = join_outcomes(
        [_list("r1", "u1", ["a", "b", "c"], T0)],
        [_ev("like", "u1", "c", T0 + timedelta(hours=1))],
        LabelPolicy(scope="shown"),
    )
    assert len(shown.groups) == 0
    policy = LabelPolicy.parse("like=5,click=0", window_hours=1000)
    assert policy.gains["like"] == 5 and policy.gains["match"] == 4
    assert join_outcomes(lists[:1], events, policy).y.tolist() == [0, 5, 5, 0]
    with pytest.raises(ValueError):
        LabelPolicy.parse("like=much")


def test_an_event_naming_another_members_list_does_not_label_it() -> None:
    """A request id is the client's when it sends one (X-Request-ID): u8's app reusing u7's
    id names u7's list in u8's events, which must not label what u7 was shown."""
    lists = [_list("rid", "u7", ["a", "b"], T0)]
    late = T0 + timedelta(days=60)  # outside the window: only the request id could join it
    assert len(join_outcomes(lists, [_ev("like", "u8", "b", late, rid="rid")]).groups) == 0
    assert join_outcomes(lists, [_ev("like", "u7", "b", late, rid="rid")]).y.tolist() == [0, 2]


def test_features_logged_under_another_schema_are_aligned_by_name() -> None:
    X = np.arange(6, dtype=float).reshape(2, 3)
    out = align_features(X, ["graph", "gone", "fused"])
    assert out.shape == (2, F)
    assert out[:, FEATURE_NAMES.index("graph")].tolist() == [0.0, 3.0]
    assert out[:, FEATURE_NAMES.index("fused")].tolist() == [2.0, 5.0]
    assert np.isnan(out[:, FEATURE_NAMES.index("quality")]).all()


def test_ndcg_matches_a_hand_computed_value() -> None:
    y = np.array([0, 2, 1])
    scores = np.array([3.0, 2.0, 1.0])  # ranks: 0 (gain 0), 2 (gain 3), 1 (gain 1)
    dcg = 3 / np.log2(3) + 1 / np.log2(4)
    idcg = 3 / np.log2(2) + 1 / np.log2(3)
    assert ndcg_at(y, np.array([3]), scores, 10) == pytest.approx(dcg / idcg)


def _world(n_lists: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Members like the candidate with the highest graph feature, sometimes click the second."""
    rng = np.random.default_rng(seed)
    col = FEATURE_NAMES.index("graph")
    lists, events = [], []
    for r in range(n_lists):
        X = rng.random((12, F))
        ids = [f"i{r}_{j}" for j in range(12)]
        at = T0 + timedelta(minutes=r)
        lists.append(_list(f"r{r:04d}", f"u{r}", ids, at, X))
        order = np.argsort(-X[:, col])
        events.append(_ev("like", f"u{r}", ids[order[0]], at + timedelta(hours=1)))
        if rng.random() < 0.5:
            events.append(_ev("click", f"u{r}", ids[order[1]], at + timedelta(hours=2)))
    return lists, events


def test_train_ltr_learns_validates_on_later_lists_and_versions_the_model(
    tmp_path: Path,
) -> None:
    # enough lists that the one informative column stands out among len(FEATURE_NAMES) - 1
    # noise columns
    lists, events = _world(400)
    data = join_outcomes(lists, events)
    result = train_ltr(data, valid_share=0.25, max_rounds=60, early_stopping=10, k=5)
    rep = result.report
    assert rep["split"] == {
        "train_lists": 300,
        "valid_lists": 100,
        "valid_from": (T0 + timedelta(minutes=300)).isoformat(),
    }
    assert rep["features"] == list(FEATURE_NAMES) and 1 <= rep["best_iteration"] <= 60
    assert rep["metrics"]["valid_ndcg@5"] > 0.9 > rep["metrics"]["valid_logged_ndcg@5"]
    top = max(rep["importance"], key=rep["importance"].get)
    assert top == "graph"
    # the model ranks unseen lists the way the members chose
    fresh, fresh_events = _world(50, seed=9)
    test = join_outcomes(fresh, fresh_events)
    assert ndcg_at(test.y, test.groups, result.scorer.score(test.X), 5) > 0.9
    m1, r1 = save_model(result, tmp_path)
    m2, _ = save_model(result, tmp_path)
    assert (m1.name, r1.name, m2.name) == ("model-v1.txt", "model-v1.json", "model-v2.txt")
    assert json.loads(r1.read_text())["version"] == 1
    loaded = LearnedScorer.load(m1)
    np.testing.assert_allclose(loaded.score(test.X), result.scorer.score(test.X))
    # and plugs into the reranker as its scoring step
    items = [{"id": f"x{j}"} for j in range(10)]
    rr = Reranker(RerankConfig(steps=("score",)), scorer=loaded)
    assert len(rr.run(CandidateBatch.from_items(items), Features.empty(10, 4, 4)).ids) == 10


def test_too_few_lists_is_a_clear_error() -> None:
    lists, events = _world(1)
    with pytest.raises(ValueError, match="need at least 2"):
        train_ltr(join_outcomes(lists, events))


def test_a_model_trained_on_other_features_refuses_to_load(tmp_path: Path) -> None:
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    X = rng.random((40, 3))
    ds = lgb.Dataset(X, label=(X[:, 0] > 0.5).astype(int), group=[10] * 4)
    ds.feature_name = ["a", "b", "c"]
    booster = lgb.train({"objective": "lambdarank", "verbosity": -1}, ds, num_boost_round=2)
    booster.save_model(str(tmp_path / "other.txt"))
    with pytest.raises(ConfigError, match="retrain"):
        LearnedScorer.load(tmp_path / "other.txt")
    s = train_lambdamart(rng.random((40, F)), np.arange(40) % 2, np.array([10] * 4), rounds=3)
    assert s.best_iteration == 3


def test_a_model_with_a_nan_leaf_refuses_to_load(tmp_path: Path) -> None:
    """A diverged training's NaN (or inf) leaf would make every score NaN: refused at load,
    so the reranker keeps the scorer it had."""
    rng = np.random.default_rng(1)
    s = train_lambdamart(rng.random((40, F)), np.arange(40) % 2, np.array([10] * 4), rounds=3)
    s.save(tmp_path / "good.txt")
    LearnedScorer.load(tmp_path / "good.txt")
    lines = (tmp_path / "good.txt").read_text().splitlines(keepends=True)
    at = next(i for i, ln in enumerate(lines) if ln.startswith("leaf_value="))
    for bad in ("nan", "inf", "-inf", "x"):
        values = lines[at].removeprefix("leaf_value=").split()
        values[-1] = bad  # the same length: tree_sizes still hold when the digits do
        edited = lines.copy()
        edited[at] = "leaf_value=" + " ".join(values).ljust(len(lines[at]) - 12) + "\n"
        (tmp_path / "bad.txt").write_text("".join(edited))
        with pytest.raises(ConfigError, match="leaf value"):
            LearnedScorer.load(tmp_path / "bad.txt")


def test_learning_to_rank_columns() -> None:
    from opendisco.rerank import RerankContext, assemble_features

    items = [{"id": "a", "popularity": 9.0}, {"id": "b", "popularity": 0.0}, {"id": "c"}]
    batch = CandidateBatch.from_items(
        items,
        sources=[{"graph": 4.0, "trending": 1.0}, {"graph": 2.0}, {"semantic": 0.5}],
        ranks=[{"graph": 1, "trending": 3}, {"graph": 2}, {"semantic": 1}],
    )
    feats = Features.empty(3, 4, 2)
    beh = np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    feats = Features(
        feats.content,
        beh / np.maximum(np.linalg.norm(beh, axis=1, keepdims=True), 1e-12),
        feats.exposure,
        feats.inbound,
        feats.graph,
        behaviour_norm=np.linalg.norm(beh, axis=1),
    )
    ctx = RerankContext(behaviour_vector=np.array([2.0, 1.0]), history=7)
    X = assemble_features(batch, feats, ctx, RerankConfig())
    c = {n: X[:, j] for j, n in enumerate(FEATURE_NAMES)}
    np.testing.assert_allclose(c["behaviour_dot"], beh @ np.array([2.0, 1.0]))  # the ALS score
    np.testing.assert_allclose(c["rr_graph"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(c["rr_trending"], [1 / 3, 0.0, 0.0])
    np.testing.assert_allclose(c["score_graph"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(c["score_semantic"], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(c["history"], np.log1p(7))
    np.testing.assert_allclose(c["log_popularity"], np.log1p([9.0, 0.0, 0.0]))
    # the linear model gives them no weight: its scores are unchanged by the new columns
    w = RerankConfig().weight_vector()
    assert all(w[FEATURE_NAMES.index(n)] == 0 for n in ("behaviour_dot", "rr_graph", "history"))


def test_a_fallback_list_logged_without_features_is_skipped_not_a_crash() -> None:
    """The API logs its fallback answers (served while the pipeline failed) with no feature
    names and no rows (``api.routes.discovery``). Before, ``join_outcomes`` read such a list
    as having every feature (its ``features`` empty → ``FEATURE_NAMES``) and zero columns, and
    one beside a ranked list failed ``opendisco train ltr`` with numpy's "all the input array
    dimensions ... must match exactly"."""
    rng = np.random.default_rng(0)

    def logged(rid: str, fallback: bool) -> dict[str, Any]:
        served = replace(served_list(rid, degraded=fallback), at=T0)
        if fallback:  # as api.routes.discovery logs it
            served = replace(served, feature_names=(), X=None, policy={"kind": "fallback"})
        return decode_list(encode_list(served, 200, rng))

    like = [_ev("like", "u1", "b", T0 + timedelta(minutes=1))]
    data = join_outcomes([logged("r1", False), logged("r2", True)], like)
    assert data.list_ids == ["r1"] and data.X.shape == (3, F)
    assert data.skipped["no_features"] == 1
    alone = join_outcomes([logged("r2", True)], like)
    assert len(alone.groups) == 0 and alone.X.shape == (0, F)


def test_a_validation_outcome_never_labels_a_training_list() -> None:
    """``split_outcomes`` (what ``opendisco train ltr`` trains on): the lists before the
    validation period are labelled only by the events before it. Before, one join labelled
    every list, so a like posted during the validation period labelled the training lists
    that showed the item too, and a model that learnt it was judged on the same like."""
    lists = [_list(f"r{d}", "u1", ["a", "b", "c"], T0 + timedelta(days=d)) for d in range(5)]
    events = [
        _ev("like", "u1", "a", T0 + timedelta(hours=1)),  # labels r0 (and nothing later)
        _ev("like", "u1", "c", T0 + timedelta(days=3, hours=1)),  # after r3 served: valid
    ]
    train, valid, everything = split_outcomes(lists, events, valid_share=0.25)
    assert valid.list_ids == ["r3"] and valid.y.tolist() == [0, 0, 2]
    assert train.list_ids == ["r0"] and train.y.tolist() == [2, 0, 0]  # c: not before r3
    assert train.skipped["no_positive"] == 2  # r1, r2: their only outcome came later
    assert everything.list_ids == ["r0", "r1", "r2", "r3"]  # the refit: every outcome
    assert everything.y.reshape(4, 3)[:3, 2].tolist() == [2, 2, 2]
    result = train_ltr(train, valid=valid, refit=everything, max_rounds=3, early_stopping=2)
    assert result.report["lists"] == 4 and result.report["split"]["train_lists"] == 1
    assert result.report["skipped_lists"] == everything.skipped


def test_a_late_outcome_naming_its_training_list_still_labels_it() -> None:
    """An event that names a training list (its member's request id) is that list's own
    outcome even when it comes after the validation period began (a burst of lists served
    within a second, the likes after them): without it every training list had no outcome
    and ``train ltr`` refused to train. It labels no other member's list."""
    lists = [_list(f"r{d}", "u1", ["a", "b", "c"], T0 + timedelta(seconds=d)) for d in range(3)]
    lists.append(_list("r3", "u1", ["d", "e", "c"], T0 + timedelta(seconds=3)))
    late = T0 + timedelta(minutes=5)  # after every list was served
    events = [
        _ev("like", "u1", "a", late, rid="r0"),
        _ev("like", "u2", "b", late, rid="r1"),  # another member naming r1: nothing
        _ev("like", "u1", "c", late, rid="r3"),
    ]
    train, valid, _ = split_outcomes(lists, events, valid_share=0.25)
    assert valid.list_ids == ["r3"] and valid.y.tolist() == [0, 0, 2]
    assert train.list_ids == ["r0"] and train.y.tolist() == [2, 0, 0]


def test_rows_a_short_page_was_filled_with_are_logged_as_such_and_not_learned_from() -> None:
    """A page a failed source left short is filled from the fallback's lists (``filled``
    rows: no source proposed them); the served-list log marks them and the join leaves them
    out, outcome and all, keeping the list's other rows."""
    rng = np.random.default_rng(0)
    served = replace(served_list("r1"), at=T0, filled=[1])
    doc = encode_list(served, 200, rng)
    assert [doc["ids"][r] for r in doc["filled"]] == ["b"]
    likes = [_ev("like", "u1", i, T0 + timedelta(minutes=1)) for i in ("b", "c")]
    data = join_outcomes([decode_list(doc)], likes)
    assert data.groups.tolist() == [2] and data.y.tolist() == [0, 2]
    assert data.X.tolist() == [served.X[0].tolist(), served.X[2].tolist()]
    assert data.logged_rank.tolist() == [0, 1] and data.skipped["filled_rows"] == 1


def test_odd_feature_values_train_a_model_that_loads_and_scores_finite() -> None:
    """Logged rows with NaN (a feature not computed), ±inf and float32's largest values, and
    lists of an older feature set (a rolling deploy: a column missing, one retired) train
    without an error; the model passes the serving loader's checks and scores such rows with
    finite numbers."""
    lists, events = _world(120)
    for r, d in enumerate(lists):
        X = d["X"] = d["X"].copy()
        if r % 4 == 0:
            X[0, :] = np.nan
        elif r % 4 == 1:
            X[0, 3], X[1, 4], X[2, 5] = np.inf, -np.inf, 3.4e38
        elif r % 4 == 2:  # logged before the last column existed, with one since retired
            d["features"] = [*FEATURE_NAMES[:-1], "retired"]
    train, valid, data = split_outcomes(lists, events)
    result = train_ltr(train, valid=valid, refit=data, max_rounds=30, early_stopping=5)
    assert result.report["lists"] == 120 and np.isnan(data.X[2 * 12 :: 4 * 12, -1]).all()
    loaded = LearnedScorer.from_bytes(result.scorer.model_text().encode(), "trained")
    assert np.isfinite(loaded.score(data.X)).all()
