"""The time split: held-out positives are the latest, never in the fitting data."""

from __future__ import annotations

from pathlib import Path

import movielens_layouts as L
import numpy as np
import pytest

from opendisco.eval import Ratings, read_movielens, time_split
from opendisco.ingest._movielens_files import split_title


def _ratings(rows: list[tuple[str, str, float, int]]) -> Ratings:
    return Ratings.from_rows(rows)


def test_split_by_time_per_user() -> None:
    rows = [("u1", f"m{i}", 5.0, 1000 - i) for i in range(12)]  # m11 is the oldest
    rows += [("u1", "m99", 2.0, 5000)]  # negative: neither fitted on nor a target
    rows += [("u2", "m1", 4.0, 10), ("u2", "m2", 4.5, 30), ("u2", "m3", 4.0, 20)]
    rows += [("u3", "m1", 5.0, 1), ("u3", "m2", 3.0, 2)]  # one positive: dropped
    split = time_split(_ratings(rows), n_test=5, n_val=5)
    assert split.users.tolist() == ["u1", "u2"]
    items = split.items

    def ids(arr: np.ndarray) -> list[str]:
        return [items[i] for i in arr]

    assert ids(split.test[0]) == ["m4", "m3", "m2", "m1", "m0"]
    assert ids(split.validation[0]) == ["m9", "m8", "m7", "m6", "m5"]
    assert ids(split.train[0]) == ["m11", "m10"]
    # u2 has 3 positives: 2 test, no validation, 1 train (the oldest)
    assert ids(split.train[1]) == ["m1"]
    assert split.validation[1].size == 0
    assert ids(split.test[1]) == ["m3", "m2"]
    assert "m99" in set(items)  # in the catalogue, never fitted on
    test_stage = split.stage("test")
    assert ids(test_stage.history[0]) == ["m11", "m10", "m9", "m8", "m7", "m6", "m5"]
    assert test_stage.cold_users.tolist() == [False, True]
    assert test_stage.cold_items[split.items.tolist().index("m0")]
    assert split.stage("validation").evaluable.tolist() == [0]
    with pytest.raises(ValueError):
        split.stage("train")  # type: ignore[arg-type]


def test_timestamp_ties_are_not_broken_by_item_id() -> None:
    """Equal timestamps (a dataset with coarse or missing times): by item id every user's
    highest ids, MovieLens' later-added movies, were the test targets (m16..m20 here) and a
    replayed order made "recent" mean "high id"; a fixed hash of (user, item) is neutral and
    still deterministic."""
    rows = [(f"u{u}", f"m{i}", 5.0, 1000) for u in range(50) for i in range(1, 21)]
    split = time_split(_ratings(rows), n_test=5, n_val=5)
    test_ids = [int(split.items[i][1:]) for t in split.test for i in t]
    assert 8.0 < float(np.mean(test_ids)) < 13.0  # ~10.5 when ties say nothing; 18 by id
    assert len({tuple(sorted(t.tolist())) for t in split.test}) > 40  # not one set for all
    again = time_split(_ratings(rows), n_test=5, n_val=5)
    assert all(np.array_equal(a, b) for a, b in zip(split.test, again.test, strict=True))


def test_split_on_movielens_respects_time_and_keeps_test_out_of_fitting(movielens: Path) -> None:
    data = read_movielens(movielens)
    want = L.facts(movielens)  # ml-latest-small: 100,836 ratings, 9,742 movies
    assert len(data.ratings) == want.ratings and len(data.items) == want.movies
    mid, title, _ = want.first_movie  # Toy Story (1995)
    assert (data.items[f"m{mid}"]["title"], data.items[f"m{mid}"]["year"]) == split_title(title)
    # the first row of ratings.csv (ml-latest-small: 1,1,4.0,964982703)
    user, item, stars, ts = want.first_rating
    seconds = int(float(ts))
    while seconds >= 10**11:  # a release counting milliseconds (or smaller units)
        seconds //= 1000
    same = (data.ratings.user_ids == f"u{user}") & (data.ratings.item_ids == f"m{item}")
    row = np.flatnonzero(same & (data.ratings.timestamps == seconds))
    assert len(row) >= 1 and data.ratings.ratings[row[0]] == float(stars)
    if L.published_small(movielens):  # its published figures, not only what its files say
        assert (len(data.ratings), len(data.items)) == (100_836, 9_742)
        assert (data.items["m1"]["title"], data.items["m1"]["year"]) == ("Toy Story", 1995)
        assert (user, item, stars, seconds) == ("1", "1", "4.0", 964982703)
    split = time_split(data, n_test=5, n_val=5)
    for u in range(len(split.users)):
        tr, va, te = split.train_ts[u], split.validation_ts[u], split.test_ts[u]
        assert len(tr) >= 1 and len(te) >= 1
        if len(va):
            assert tr.max() <= va.min() and va.max() <= te.min()
        else:
            assert tr.max() <= te.min()
        assert not set(split.test[u]) & (set(split.train[u]) | set(split.validation[u]))
    test_matrix = split.stage("test").matrix
    val_matrix = split.stage("validation").matrix
    for u in range(0, len(split.users), 7):
        assert test_matrix[u, split.test[u]].nnz == 0
        assert val_matrix[u, split.validation[u]].nnz == 0
    # positives are ratings >= the scale's threshold, every one lands in exactly one part
    pos = data.ratings.positives(data.threshold)
    users_kept = set(split.users)
    expected = int(sum(u in users_kept for u in pos.user_ids))
    assert sum(split.summary()[p] for p in ("train", "validation", "test")) == expected


def test_reads_ml100k_layout(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text(
        "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n"
    )
    flags = ["0"] * 19
    flags[1] = flags[8] = "1"  # Action, Drama
    (tmp_path / "u.item").write_text(
        "10|Heat (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n", encoding="latin-1"
    )
    data = read_movielens(tmp_path)
    assert data.ratings.user_ids.tolist() == ["u1", "u1", "u2"]
    assert data.ratings.timestamps.tolist() == [881250949, 881250950, 881250951]
    assert data.items["m10"]["tags"] == ["Action", "Drama"]
    assert data.items["m10"]["year"] == 1995
    assert data.ratings.positives().item_ids.tolist() == ["m10", "m10"]
