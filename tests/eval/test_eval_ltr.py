"""The offline learning loop: the rolled split, its rounds, and `learn_ranker` on the real
servers (a 40-movie, 8-member world): lists served before every rolled positive, labelled by
later likes only, validated on the validation round, nothing from the test period."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from opendisco import Settings, clients
from opendisco.eval import (
    Dataset,
    Ratings,
    learn_ranker,
    read_movielens,
    relearn_ranker,
    roll_split,
    rolling_rounds,
    similarity_rows,
    time_split,
)
from opendisco.rerank import LearnedScorer


def _split(sizes: list[int]) -> tuple[Dataset, object]:
    rows = []
    for u, n in enumerate(sizes):
        rows += [(f"u{u}", f"m{(3 * u + j) % 40 + 1}", 5.0, 1000 * u + j) for j in range(n)]
    data = Dataset("roll", Ratings.from_rows(rows), {})
    return data, time_split(data, n_test=2, n_val=2)


def test_roll_split_moves_the_last_training_positives_and_keeps_the_test_period_out() -> None:
    _, split = _split([12, 6, 4])
    roll = roll_split(split, 3)
    for u in range(3):
        train = split.train[u].tolist()
        keep = max(1, len(train) - 3)
        assert roll.train[u].tolist() == train[:keep]
        assert roll.validation[u].tolist() == train[keep:]
        assert roll.test[u].tolist() == split.validation[u].tolist()
        # the rolled split knows nothing of the original test period
        test_items = set(split.test[u].tolist())
        seen = {*roll.train[u].tolist(), *roll.validation[u].tolist(), *roll.test[u].tolist()}
        assert not test_items & seen
        assert roll.train_ts[u].max() <= roll.validation_ts[u].min(initial=10**12)
    # its test stage is the original validation stage
    a, b = roll.stage("test"), split.stage("validation")
    assert all(np.array_equal(x, y) for x, y in zip(a.history, b.history, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(a.targets, b.targets, strict=True))
    assert [len(t) for t in roll.train] == [5, 1, 1]  # of 8, 2 and 1 training positives
    with pytest.raises(ValueError):
        roll_split(split, -1)


def test_rolling_rounds_serve_a_list_before_every_rolled_positive() -> None:
    _, split = _split([12, 6, 5])
    roll = roll_split(split, 3)
    rounds = rolling_rounds(roll)
    items, users = split.items, split.users
    assert len(rounds) == 4  # three rolled positions, then the validation round
    # aligned on the last rolled positive: u1 (2 training positives) rolls 1, in round 3
    assert [r.users for r in rounds[:3]] == [["u0"], ["u0"], ["u0", "u1"]]
    for u in range(3):
        liked: list[str] = []
        for rnd in rounds[:3]:
            if users[u] not in rnd.users:
                continue
            at = rnd.users.index(users[u])
            known = [items[i] for i in roll.train[u]] + liked
            assert rnd.exclude[at] == known  # everything known before, nothing later
            user, item = rnd.likes[at]
            assert user == users[u] and item not in rnd.exclude[at]
            liked.append(item)
        assert liked == [items[i] for i in roll.validation[u]]  # every one, in time order
    last = rounds[-1]
    assert last.users == ["u0", "u1", "u2"]
    assert last.exclude[0] == [items[i] for i in split.train[0]]
    assert [i for u, i in last.likes if u == "u0"] == [items[i] for i in split.validation[0]]
    only = rolling_rounds(roll, users=[1])
    assert [r.users for r in only] == [["u1"], ["u1"]]


async def test_learn_ranker_runs_the_loop_on_the_fitting_period_only(
    eval_settings: Settings, movielens: Path, tmp_path: Path
) -> None:
    full = read_movielens(movielens)
    movies = list(full.items)[:40]  # the release's first 40 (ml-latest-small: ids 1 to 44)
    rng = np.random.default_rng(3)
    rows = []
    for u in range(8):  # each member: 14 positives, half from a favourite block of movies
        block = movies[(u % 4) * 10 : (u % 4) * 10 + 10]
        picks = list(rng.choice(block, 7, replace=False)) + list(rng.choice(movies, 7))
        for j, m in enumerate(dict.fromkeys(picks)):
            rows.append((f"u{u}", m, 4.5, 1_000_000 + 100 * u + j))
    data = Dataset("mini", Ratings.from_rows(rows), {m: full.items[m] for m in movies})
    split = time_split(data, n_test=2, n_val=2)
    settings = eval_settings.model_copy(
        update={
            "mongo_db": f"{eval_settings.mongo_db}ltr",
            "index_alias": eval_settings.index_alias.replace("eval", "evalltr"),
        }
    )
    out = tmp_path / "models"
    loop: dict[str, Any] = {
        "k": 5,
        "lists_per_user": 3,
        "grid": ({"num_leaves": 4, "min_data_in_leaf": 5},),
        "itemsim_candidates": (0, 20),
    }
    path, report = await asyncio.to_thread(
        learn_ranker, settings, data, split, out, ease_lambda=10.0, **loop
    )
    inputs = report["inputs"]
    roll = roll_split(split, 3)
    rolled = sum(len(v) for v in roll.validation)
    valid_likes = sum(len(v) for v in split.validation)
    assert inputs["rounds"] == 4
    # every round served once per configuration (source off, on), on the same state
    assert inputs["logged_lists"] == 2 * (rolled + sum(1 for v in split.validation if len(v)))
    assert inputs["outcome_events"] == rolled + valid_likes
    assert inputs["replay"]["events"] == sum(len(t) for t in roll.train)  # the pre-period
    assert report["split"]["valid_lists"] >= 1 and report["split"]["train_lists"] >= 1
    assert report["window"]["last"] >= report["split"]["valid_from"]
    assert path.name == "model-v1.txt" and LearnedScorer.load(path) is not None
    # the item-item table of the loop's namespace: fitted on the pre-period only
    pre_rows = similarity_rows(roll.stage("validation"), lam=10.0)
    assert inputs["similarity_rows"] == len(pre_rows) > 0
    sel = report["selection"]
    assert sel["itemsim_candidates"] == [0, 20] and inputs["itemsim_candidates"] == sel["picked"]
    assert sel["picked"] == (20 if sel["comparisons"][0]["picked"] else 0)
    assert sel["members"] == len(split.users)
    assert [c["itemsim_candidates"] for c in sel["per_config"]] == [0, 20]
    for c in sel["per_config"]:
        assert 0 <= c["valid_round_ndcg"] <= 1 and 0 <= c["rolling_ndcg"] <= 1
    assert set(report["ablations"]) == {
        "without item_sim",
        "without item_sim_recent",
        "without percentiles",
    }
    assert report["single_feature_valid_ndcg"]
    for c in sel["per_config"]:  # each grid point's per-member value is reported
        assert [g["params"] for g in c["grid"]] == [{"num_leaves": 4, "min_data_in_leaf": 5}]
        assert 0 <= c["grid"][0]["member_value"] <= 1

    # the training step alone on the same logged lists: the same choices and figures
    again, again_report = await asyncio.to_thread(relearn_ranker, settings, split, out, **loop)
    assert again.name == "model-v2.txt" and again_report["inputs"]["relearned"]
    assert again_report["selection"] == sel
    assert again_report["metrics"] == report["metrics"]

    client = clients.mongo(settings)
    try:
        db = client[settings.mongo_db]
        liked = {(e["user_id"], e["item_id"]) for e in db["events"].find({"type": "like"})}
        test = {(split.users[u], split.items[i]) for u, t in enumerate(split.test) for i in t}
        assert liked and not liked & test  # nothing of the test period reached the loop
        # every training list was served before the validation round began
        lists = list(db["served_lists"].find({}, {"at": 1, "user_id": 1}))
        assert len(lists) == inputs["logged_lists"]
        tags = [str(d["_id"]).split(".")[0] for d in lists]
        assert tags.count("c0") == tags.count("c1") == len(lists) // 2
    finally:
        client.drop_database(settings.mongo_db)
        client.close()
