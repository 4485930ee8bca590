"""Packed float16 vectors: derived by the document writer, decoded by the feature store."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from opendisco.ingest import (
    PACKED_FIELD,
    content_hash,
    pack_vectors,
    to_index_doc,
    unpack_many,
    unpack_vectors,
    validate_item,
)

ITEM = {
    "_id": "m1",
    "kind": "movie",
    "title": "Heat",
    "version": 2,
    "created_at": datetime(2024, 1, 2, tzinfo=UTC),
    "updated_at": datetime(2024, 1, 2, tzinfo=UTC),
}


def _unit(rng: np.random.Generator, d: int) -> np.ndarray:
    v = rng.standard_normal(d)
    return v / np.linalg.norm(v)


def test_round_trip_keeps_cosines_to_three_digits() -> None:
    rng = np.random.default_rng(3)
    e, b = _unit(rng, 384), rng.standard_normal(32) * 2.0
    got = unpack_vectors(pack_vectors(e, b), 384, 32)
    assert got is not None
    ce, cb = got
    assert ce.dtype == np.float32 and ce.shape == (384,) and cb is not None and cb.shape == (32,)
    assert np.max(np.abs(ce - e)) < 1e-3 and np.max(np.abs(cb - b) / np.abs(b)) < 1e-3
    others = np.stack([_unit(rng, 384) for _ in range(50)])
    assert np.max(np.abs(others @ ce - others @ e)) < 2e-3
    assert len(pack_vectors(e, b)) == 4 * ((384 + 32) * 2 + 2) // 3  # 1,112 base64 chars


def test_without_behaviour_and_mismatched_or_corrupt_input() -> None:
    e = np.linspace(-0.1, 0.1, 8)
    got = unpack_vectors(pack_vectors(e), 8, 4)
    assert got is not None and got[1] is None and np.allclose(got[0], e, atol=1e-4)
    assert unpack_vectors(pack_vectors(e), 16, 4) is None  # other dimension settings
    assert unpack_vectors(pack_vectors(e, [1.0, 2.0, 3.0]), 8, 4) is None
    assert unpack_vectors("not base64!", 8, 4) is None
    assert unpack_vectors("QUJD", 8, 4) is None  # 3 bytes: not float16s


def test_unpack_many_equals_one_by_one_on_a_mixed_batch() -> None:
    rng = np.random.default_rng(5)
    packed: dict[str, object] = {
        f"full{i}": pack_vectors(_unit(rng, 8), rng.standard_normal(4)) for i in range(3)
    }
    packed |= {f"content{i}": pack_vectors(_unit(rng, 8)) for i in range(2)}
    packed |= {"other_dims": pack_vectors(_unit(rng, 16)), "bad": "not base64!", "none": None}
    got = unpack_many(packed, 8, 4)  # type: ignore[arg-type]
    assert set(got) == {"full0", "full1", "full2", "content0", "content1"}
    for key, (content, behaviour) in got.items():
        one = unpack_vectors(packed[key], 8, 4)  # type: ignore[arg-type]
        assert one is not None and np.array_equal(content, one[0]) and content.dtype == np.float32
        assert (behaviour is None) == (one[1] is None) == key.startswith("content")
        assert behaviour is None or np.array_equal(behaviour, one[1])


def test_index_doc_carries_the_packing_of_its_vectors_outside_the_hash() -> None:
    beh = [0.5] * 32
    item = validate_item(dict(ITEM, behaviour=beh), behaviour_dim=32)
    doc = to_index_doc(item, [0.6, 0.8])
    got = unpack_vectors(doc[PACKED_FIELD], 2, 32)
    assert got is not None and np.allclose(got[0], [0.6, 0.8], atol=1e-3)
    assert got[1] is not None and np.allclose(got[1], beh)
    assert PACKED_FIELD not in to_index_doc(item, None)  # what verify hashes
    assert doc["content_hash"] == to_index_doc(item, None)["content_hash"]
    assert content_hash(json.loads(json.dumps(doc))) == doc["content_hash"]


@pytest.mark.parametrize("bad", [None, 12, ""])
def test_fuse_moves_the_packing_out_of_the_item(bad: object) -> None:
    from opendisco.queries import fuse

    packed = pack_vectors([0.6, 0.8])
    hits = {
        "a": [{"_id": "x", "_score": 1.0, "_source": {"title": "X", PACKED_FIELD: packed}}],
        "b": [{"_id": "y", "_score": 1.0, "_source": {"title": "Y", PACKED_FIELD: bad}}],
    }
    by = {c.id: c for c in fuse(hits, {}, k=5)}
    assert by["x"].packed == packed and by["x"].item == {"title": "X"}
    assert not by["y"].packed and by["y"].item == {"title": "Y"}
