"""Packed vectors: an item's content + behaviour vectors as one compact ``_source`` string.

The reranker needs both vectors of every candidate. Reading them as JSON float lists costs an
extra ``mget`` per request (or ~3.7 KB of floats per hit); the packed copy rides along in the
candidate hits instead: little-endian float16 of ``embedding`` followed by ``behaviour`` (when
the item has one), base64-encoded — 384 + 32 dims = 1,112 characters. float16 keeps ~3
significant digits (relative error ≤ 2⁻¹¹), far below what moves a cosine similarity in
ranking; the full-precision vectors stay in ``embedding``/``behaviour`` for the k-NN fields.

The field is mapped ``binary`` (stored in ``_source`` only: not indexed, no doc values) and is
derived in :func:`~opendisco.ingest.to_index_doc`, the single writer of item documents, so it
changes exactly when the vectors do.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

__all__ = ["PACKED_FIELD", "pack_vectors", "unpack_many", "unpack_vectors"]

K = TypeVar("K")

PACKED_FIELD = "vec_f16"

_F16 = np.dtype("<f2")


def pack_vectors(embedding: Sequence[float], behaviour: Sequence[float] | None = None) -> str:
    """base64 of float16 ``embedding`` (+ ``behaviour``), little-endian."""
    parts = [np.asarray(embedding, dtype=np.float64)]
    if behaviour is not None and len(behaviour):
        parts.append(np.asarray(behaviour, dtype=np.float64))
    flat = np.concatenate(parts).astype(_F16)
    return base64.b64encode(flat.tobytes()).decode("ascii")


def unpack_vectors(
    packed: str, embedding_dim: int, behaviour_dim: int
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(content, behaviour | None)`` as float32 arrays, or ``None`` if ``packed`` is not a
    packing for these dimensions (corrupt, or written under other dimension settings)."""
    return unpack_many({0: packed}, embedding_dim, behaviour_dim).get(0)


def unpack_many(
    packed: Mapping[K, str], embedding_dim: int, behaviour_dim: int
) -> dict[K, tuple[np.ndarray, np.ndarray | None]]:
    """:func:`unpack_vectors` of every value, keyed like ``packed`` (keys whose value is not
    a packing for these dimensions are left out). One float16 → float32 conversion per
    packing length instead of one per value: 500 candidates' vectors in ~1.9 vs ~3.7 ms."""
    content, full = 2 * embedding_dim, 2 * (embedding_dim + behaviour_dim)
    by_size: dict[int, list[tuple[K, bytes]]] = {content: [], full: []}
    for key, text in packed.items():
        try:
            raw = binascii.a2b_base64(text, strict_mode=True)
        except (binascii.Error, ValueError, TypeError):
            continue
        if len(raw) in by_size:
            by_size[len(raw)].append((key, raw))
    out: dict[K, tuple[np.ndarray, np.ndarray | None]] = {}
    for size, rows in by_size.items():
        if not rows:
            continue
        flat = np.frombuffer(b"".join(raw for _, raw in rows), dtype=_F16)
        matrix = flat.reshape(len(rows), size // 2).astype(np.float32)
        for (key, _), row in zip(rows, matrix, strict=True):
            behaviour = row[embedding_dim:] if size != content else None
            out[key] = (row[:embedding_dim], behaviour)
    return out
