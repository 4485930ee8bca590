"""Pure pieces of the co-engagement graph: row encoding and per-item coalescing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from opendisco.signals import (
    UserState,
    adjacency_updates,
    co_engagement_pairs,
    decode_row,
    encode_row,
    merge_rows,
)
from opendisco.signals._graph import row_increments


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


def test_pairs_are_those_of_the_state_before_the_batch_even_when_it_was_merged() -> None:
    """A retry after a failed call sees the batch merged into the state already: the pairs
    are still those of the first application, and ``linked`` keeps only the pairs of the
    events that have not had their graph weights yet."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    batch = [
        {"id": f"e{i}", "item_id": item, "ts": t0 + timedelta(minutes=i), "weight": 1.0}
        for i, item in enumerate(["a", "b"], start=1)
    ]
    old = {"e": "e0", "id": "x", "ts": t0, "w": 1.0}
    before = {"u": UserState(user_id="u", positives=[old])}
    merged = [old, *({"e": e["id"], "id": e["item_id"], "ts": e["ts"], "w": 1.0} for e in batch)]
    after = {"u": UserState(user_id="u", positives=merged)}
    first = co_engagement_pairs(before, {"u": batch}, 10)
    assert sorted(first) == [("a", "x", 1.0), ("b", "a", 1.0), ("b", "x", 1.0)]
    assert co_engagement_pairs(after, {"u": batch}, 10) == first
    assert co_engagement_pairs(after, {"u": batch}, 10, linked={"e2"}) == [
        ("b", "a", 1.0),
        ("b", "x", 1.0),
    ]


def test_a_taker_does_not_link_back_to_what_another_call_merged_after_the_failed_one() -> None:
    """One member's events split over two concurrent calls (three clients posting one batch):
    call A merged e1 and failed before its graph write; call C then merged e2, linking b to
    a (and x). The call taking e1 over links a to x only: the pair (a, b) exists once."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def entry(e: str, item: str, minutes: int) -> dict[str, object]:
        return {"e": e, "id": item, "ts": t0 + timedelta(minutes=minutes), "w": 1.0}

    e1 = {"id": "e1", "item_id": "a", "ts": t0 + timedelta(minutes=2), "weight": 1.0}
    e2 = {"id": "e2", "item_id": "b", "ts": t0 + timedelta(minutes=1), "weight": 1.0}
    old = entry("e0", "x", 0)
    after_a = UserState(user_id="u", positives=[old, entry("e1", "a", 2)], applied=["e0", "e1"])
    by_c = co_engagement_pairs({"u": after_a}, {"u": [e2]}, 10)
    assert sorted(by_c) == [("b", "a", 1.0), ("b", "x", 1.0)]
    # C merged e2 (earlier ts than e1: the positives' order is not the merge order)
    after_c = UserState(
        user_id="u",
        positives=[old, entry("e2", "b", 1), entry("e1", "a", 2)],
        applied=["e0", "e1", "e2"],
    )
    taker = co_engagement_pairs({"u": after_c}, {"u": [e1]}, 10)
    assert taker == [("a", "x", 1.0)]
    both = adjacency_updates(by_c + taker)
    assert both["a"] == {"b": 1.0, "x": 1.0} and both["b"] == {"a": 1.0, "x": 1.0}
    # without an earlier application of e1 nothing is cut: every earlier positive links
    before = UserState(user_id="u", positives=[old, entry("e2", "b", 1)], applied=["e0", "e2"])
    assert sorted(co_engagement_pairs({"u": before}, {"u": [e1]}, 10)) == [
        ("a", "b", 1.0),
        ("a", "x", 1.0),
    ]


def test_a_batch_merged_by_a_failed_call_then_split_by_two_takers_links_each_pair_once() -> None:
    """Three clients posting one batch: the first call merged the member's events (two views
    and three positives, in order) and failed before its graph write; two takers then split
    the events. Each took its own first merged event as the cut and left out what was merged
    after it, though no other call had linked those: the pairs between events of different
    takers were made by nobody (seen in test_api_events_concurrent, ``both killed``, once the
    claims' updates were fast). Each event now links to the positives merged before it."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    kinds = [
        ("v0", "i0", 0.0),
        ("v1", "i1", 0.0),
        ("j2", "a", 1.0),
        ("j3", "b", 0.5),
        ("j4", "c", 1.0),
    ]
    evs = [{"id": e, "item_id": item, "ts": t0, "weight": w} for e, item, w in kinds]
    positives = [{"e": e["id"], "id": e["item_id"], "ts": t0, "w": 1.0} for e in evs[2:]]
    merged = UserState(user_id="u", positives=positives, applied=[e["id"] for e in evs])
    first = {"u": UserState(user_id="u")}
    whole = co_engagement_pairs(first, {"u": evs}, 10)
    assert sorted(whole) == [("b", "a", 1.0), ("c", "a", 1.0), ("c", "b", 1.0)]
    for one, other in [([0, 2, 4], [1, 3]), ([0, 2], [1, 3, 4]), ([1, 4], [0, 2, 3])]:
        split = co_engagement_pairs({"u": merged}, {"u": [evs[i] for i in one]}, 10)
        split += co_engagement_pairs({"u": merged}, {"u": [evs[i] for i in other]}, 10)
        assert sorted(split) == sorted(whole), (one, other)


def test_a_row_that_keeps_an_earlier_writers_mark_is_not_given_its_pairs_again() -> None:
    """The call taking events over leaves out, row by row, the increments of pairs whose
    event's earlier holder wrote that row (its mark kept): a write cut part-way is completed,
    not repeated."""
    pairs = [("a", "b", 1.0), ("c", "d", 1.0), ("a", "c", 2.0)]
    rows = {"a": SimpleNamespace(marks=["m0", "m1"]), "b": SimpleNamespace(marks=["m9"])}
    landed_if = [{"m1"}, {"m1"}, set()]
    assert row_increments(pairs, rows, landed_if) == {
        "b": {"a": 1.0},
        "c": {"d": 1.0, "a": 2.0},
        "d": {"c": 1.0},
        "a": {"c": 2.0},
    }
    assert row_increments(pairs, rows) == adjacency_updates(pairs)
