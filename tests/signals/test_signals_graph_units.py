"""Pure pieces of the co-engagement graph: row encoding and per-item coalescing."""

from __future__ import annotations

import pytest

from opendisco.signals import (
    adjacency_updates,
    decode_row,
    encode_row,
    merge_rows,
)


@pytest.mark.parametrize(
    "row",
    [{}, {"m1": 1.0}, {"a.b": 2.5, "$set": 1.0, "100%": 3.0, 'q"uo\\te': 1.0, "ünï\x00": 0.5}],
)
def test_row_round_trips_for_any_item_ids(row: dict[str, float]) -> None:
    text = encode_row(row)
    assert isinstance(text, str) and decode_row(text) == row
    assert encode_row(dict(reversed(list(row.items())))) == text  # stable bytes


def test_missing_row_decodes_empty_and_merge_adds_key_by_key() -> None:
    assert decode_row(None) == {} and decode_row("") == {}
    assert merge_rows({"a": 1.0, "b": 2.0}, {"b": 0.5, "c": 1.0}) == {"a": 1.0, "b": 2.5, "c": 1.0}


def test_adjacency_updates_symmetric_summed_without_self_loops() -> None:
    pairs = [("a", "b", 1.0), ("b", "a", 2.0), ("a", "c", 0.5), ("c", "c", 9.0), ("a", "b", 1.0)]
    rows = adjacency_updates(pairs)
    assert rows == {"a": {"b": 4.0, "c": 0.5}, "b": {"a": 4.0}, "c": {"a": 0.5}}


def test_one_row_per_distinct_source_item() -> None:
    pairs = [("x", "y", 1.0), ("y", "z", 1.0), ("x", "y", 1.0)]
    rows = adjacency_updates(pairs)
    assert rows == {"x": {"y": 2.0}, "y": {"x": 2.0, "z": 1.0}, "z": {"y": 1.0}}
    # one read and one write per distinct source item, whatever the number of edges
    assert len(rows) == 3
