"""Behavioural vectors (ALS, fold-in), the LambdaMART scorer, and the train / events post CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

from opendisco import Settings, clients
from opendisco.cli.main import cli
from opendisco.ingest import read_vector
from opendisco.rerank import (
    FEATURE_NAMES,
    LearnedScorer,
    fold_in,
    train_als,
    train_lambdamart,
)


def _synthetic_interactions(seed: int = 0) -> list[tuple[str, str, float]]:
    rng = np.random.default_rng(seed)
    out = []
    for u in range(120):
        group = u % 3  # three taste groups, each likes its own third of 60 items
        for i in rng.choice(20, size=8, replace=False):
            out.append((f"u{u}", f"i{group * 20 + int(i)}", 1.0))
    return out


def test_fold_in_recovers_trained_user_factors() -> None:
    inter = _synthetic_interactions()
    model = train_als(inter, factors=8, iterations=20, regularization=0.05, alpha=10.0)
    row = {i: r for r, i in enumerate(model.item_ids)}
    gram = model.gram()
    cos = []
    for ui, user in enumerate(model.user_ids[:30]):
        items = [row[i] for u, i, _ in inter if u == user]
        u = fold_in(
            model.item_factors[items],
            np.ones(len(items)),
            alpha=9.0,
            regularization=0.05,
            gram=gram,
        )
        ref = model.user_factors[ui]
        cos.append(float(u @ ref / np.linalg.norm(u) / np.linalg.norm(ref)))
    assert np.median(cos) > 0.95, cos
    # fold-in of one group's items scores that group's items highest
    u = fold_in(model.item_factors[[row["i3"], row["i5"]]])
    scores = model.item_factors @ u
    top = [model.item_ids[r] for r in np.argsort(-scores)[:10]]
    assert sum(int(i[1:]) < 20 for i in top) >= 8, top
    assert fold_in(np.zeros((2, 8))) is None


def test_learned_scorer_round_trips_through_a_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.random((40, len(FEATURE_NAMES)))
    y = (X[:, 0] > 0.5).astype(int)
    s = train_lambdamart(X, y, np.array([10, 10, 10, 10]), rounds=5)
    s.save(tmp_path / "m.txt")
    np.testing.assert_allclose(LearnedScorer.load(tmp_path / "m.txt").score(X), s.score(X))


def test_train_cli_stores_behaviour_and_leaves_the_items_alone(
    clustered_settings: Settings, movielens: Path
) -> None:
    mc = clients.mongo(clustered_settings)
    db = mc[clustered_settings.mongo_db]
    coll = db[clustered_settings.items_collection]
    base = clustered_settings.behaviour_collection
    ids = [f"m{i}" for i in (1, 2, 3, 6, 10)] + ["m-never-rated"]
    coll.delete_many({"_id": {"$in": ids}})
    coll.insert_many([{"_id": i, "title": i, "version": 1, "deleted": False} for i in ids])
    try:
        res = CliRunner().invoke(
            cli,
            ["train", "--movielens", str(movielens), "--iterations", "3"],
            obj=clustered_settings,
        )
        assert res.exit_code == 0, res.output
        report = json.loads(res.output[res.output.index("{") :])
        assert report["als"]["written"] == report["als"]["vectors"] > 5
        # published as a collection of its own, named by the pointer every reader follows
        pointer = db[f"{base}_model"].find_one({"_id": "current"})
        assert pointer["version"] == report["als"]["version"]
        store = db[pointer["collection"]]
        assert store.count_documents({}) == report["als"]["vectors"]
        items = {d["_id"]: d for d in coll.find({"_id": {"$in": ids}})}
        assert all(d["version"] == 1 and "behaviour" not in d for d in items.values())
        stored = {d["_id"]: d for d in store.find({"_id": {"$in": ids}})}
        assert sorted(stored) == sorted(ids[:-1])  # never rated: no vector
        for d in stored.values():
            # stored as a BSON float32 vector of behaviour_dim dimensions
            vec = read_vector(d["behaviour"], clustered_settings.behaviour_dim)
            assert vec is not None and np.isfinite(vec).all()
    finally:
        coll.delete_many({"_id": {"$in": ids}})
        for name in db.list_collection_names():  # the models, their pointer and lease
            if name.startswith(base):
                db.drop_collection(name)
        mc.close()


def test_events_post_cli_reports_rejections(
    clustered_settings: Settings, clustered_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    lines = [
        {"id": uuid.uuid4().hex, "type": "like", "user_id": user, "item_id": "alpha2"},
        {"id": uuid.uuid4().hex, "type": "like", "user_id": user},
    ]
    path = tmp_path / "ev.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    res = CliRunner().invoke(cli, ["events", "post", str(path)], obj=clustered_settings)
    assert res.exit_code == 1, res.output
    out = json.loads(res.output)
    assert out["accepted"] == 1 and out["rejected"][0]["index"] == 1
    assert "item_id" in out["rejected"][0]["reason"]
