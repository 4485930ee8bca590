"""Pure pieces of the co-engagement graph: key escaping and per-item coalescing."""

from __future__ import annotations

import pytest

from opendisco.ingest.graph import SEP, ItemGraph, adjacency_updates, decode_key, encode_key


@pytest.mark.parametrize(
    "item_id",
    ["m1", "a.b", "$set", "100%", "%2E", "a%25.b$", "x\x00y", "ünï.cødé", "12.5", "..", "$"],
)
def test_encode_key_round_trips_and_is_a_safe_field_name(item_id: str) -> None:
    key = encode_key(item_id)
    assert "." not in key and not key.startswith("$") and "\x00" not in key
    assert decode_key(key) == item_id


def test_encode_key_is_injective_on_lookalikes() -> None:
    ids = ["a.b", "a%2Eb", "a%252Eb", "a$b", "a%24b"]
    assert len({encode_key(i) for i in ids}) == len(ids)


def test_adjacency_updates_symmetric_summed_without_self_loops() -> None:
    pairs = [("a", "b", 1.0), ("b", "a", 2.0), ("a", "c", 0.5), ("c", "c", 9.0), ("a", "b", 1.0)]
    rows = adjacency_updates(pairs)
    assert rows == {"a": {"b": 4.0, "c": 0.5}, "b": {"a": 4.0}, "c": {"a": 0.5}}


def test_edge_updates_match_adjacency_rows() -> None:
    pairs = [("x", "y", 1.0), ("y", "z", 1.0), ("x", "y", 1.0)]
    edges = ItemGraph.edge_updates(pairs)
    assert edges == {
        f"x{SEP}y": ("x", "y", 2.0),
        f"y{SEP}x": ("y", "x", 2.0),
        f"y{SEP}z": ("y", "z", 1.0),
        f"z{SEP}y": ("z", "y", 1.0),
    }
    # one write per distinct source item, whatever the number of edges
    assert len(adjacency_updates(pairs)) == 3
