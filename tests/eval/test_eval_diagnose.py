"""stage_recall: per-source, candidate-set and final recall of held-out targets (pure)."""

from __future__ import annotations

import pytest

from opendisco.eval import stage_recall


def test_stage_recall_splits_candidate_misses_from_ranking_losses() -> None:
    traces = [
        # targets a, b: a proposed by graph+behaviour, b by trending only; top-2 keeps a
        (
            {"a": ("graph", "behaviour"), "b": ("trending",), "x": ("graph",)},
            ["a", "x"],
            {"a", "b"},
        ),
        # target c never proposed; d proposed by graph but ranked out
        ({"d": ("graph",), "y": ("behaviour",)}, ["y", "z"], {"c", "d"}),
        # no targets: skipped
        ({"a": ("graph",)}, ["a"], set()),
    ]
    out = stage_recall(traces, k=2)
    assert out["users"] == 2
    assert out["source_recall"] == {"behaviour": 0.25, "graph": 0.5, "trending": 0.25}
    assert out["candidate_recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    # user 1 lost b of {a, b}; user 2 lost d of {d}
    assert out["lost_in_ranking"] == pytest.approx((0.5 + 1.0) / 2)


def test_stage_recall_only_counts_the_top_k() -> None:
    out = stage_recall([({"a": ("graph",), "b": ("graph",)}, ["b", "a"], {"a"})], k=1)
    assert out["recall@1"] == 0.0 and out["candidate_recall"] == 1.0
    assert stage_recall([], k=5) == {"users": 0}
