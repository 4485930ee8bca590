"""Which complete indices a rebuild's retention deletes (pure: ``beyond_retention``; the
orphan of a rebuild killed before its swap, on the real engine: test_ingest_reindex_faults)."""

from __future__ import annotations

from opendisco.ingest._indices import beyond_retention

A, B, C, D = (f"items-v2026010{n}000000000000" for n in range(1, 5))


def test_keep_counts_only_indices_the_alias_served() -> None:
    # D was built after C, the index the alias served until the swap, and never swapped in
    assert beyond_retention([A, B, C, D], [C], keep=2) == [D, A]
    assert beyond_retention([A, B, C, D], [C], keep=1) == [D, B, A]
    assert beyond_retention([B, C], [C], keep=5) == []


def test_without_a_served_index_every_complete_one_is_a_rollback_target() -> None:
    assert beyond_retention([A, B, C], [], keep=2) == [A]
    assert beyond_retention([C, A, B], [], keep=0) == [C, B, A]
