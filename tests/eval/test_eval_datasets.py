"""The evaluation on datasets it was not written against: other MovieLens layouts and scales,
built at run time from a slice of ml-latest-small (tests/movielens_layouts.py), with the
default settings (baselines only here; the served path is in test_eval_replay.py)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import movielens_layouts as L
import numpy as np
import pytest
from click.testing import CliRunner

from opendisco import Settings
from opendisco.cli.main import cli
from opendisco.eval import read_movielens, time_split


@pytest.fixture(scope="module")
def ml_slice(movielens: Path) -> L.Slice:
    return L.read_slice(movielens, users=60)


def test_the_positive_threshold_follows_the_rating_scale(ml_slice: L.Slice, tmp_path: Path) -> None:
    """The same ratings on a 10-point scale give the same positives (a fixed 4 made 2 stars
    positive there) and on a 0-1 scale do not leave nothing positive."""
    five = read_movielens(L.write_csv(ml_slice, tmp_path / "five"))
    rows = [(*r[:2], f"{2 * float(r[2]):g}", r[3]) for r in ml_slice.ratings]
    ten = read_movielens(L.write_csv(replace(ml_slice, ratings=rows), tmp_path / "ten"))
    rows = [(*r[:2], f"{float(r[2]) / 5:g}", r[3]) for r in ml_slice.ratings]
    unit = read_movielens(L.write_csv(replace(ml_slice, ratings=rows), tmp_path / "unit"))
    assert (five.threshold, ten.threshold, unit.threshold) == (4.0, 8.0, pytest.approx(0.8))
    base = time_split(five).summary()
    for other in (ten, unit):
        summary = time_split(other).summary()
        assert {k: v for k, v in summary.items() if k != "threshold"} == {
            k: v for k, v in base.items() if k != "threshold"
        }


def _derived(s: L.Slice, kind: str, dst: Path) -> Path:
    if kind == "ml-1m":
        return L.write_ml1m(s, dst)
    if kind == "ml-10m-remapped":
        return L.write_ml10m(L.remap_ids(s), dst)
    # one timestamp for everything, most ratings >= 4, no tags
    return L.write_csv(replace(L.mostly_high(L.equal_timestamps(s)), tags=[]), dst)


@pytest.mark.parametrize("kind", ["ml-1m", "ml-10m-remapped", "same-time-mostly-high"])
def test_eval_runs_with_default_settings_on_a_derived_dataset(
    ml_slice: L.Slice, tmp_path: Path, base_settings: Settings, kind: str
) -> None:
    path = _derived(ml_slice, kind, tmp_path / kind)
    out = tmp_path / "res"
    args = ["eval", "--dataset", str(path), "--no-served", "--ease-items", "500"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)], obj=base_settings)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["split"]["threshold"] == 4.0 and report["split"]["test"] > 0
    by = {m["name"]: m for m in report["models"]}
    assert set(by) == {"random", "most-popular", "EASE", "ALS"}
    for model in by.values():
        assert model["users"] > 0
        assert all(math.isfinite(v) for v in model["metrics"].values() if v is not None)
    assert by["EASE"]["metrics"]["ndcg@10"] > by["random"]["metrics"]["ndcg@10"]
    ids = read_movielens(path).ratings.user_ids
    assert len(np.unique(ids)) == len({r[0] for r in ml_slice.ratings})
