"""Vectors stored in MongoDB: BSON Binary vectors (subtype 9, float32), read back with checks.

An array of doubles costs FerretDB (SQLite rows of JSON) a number parse per component on
every read: a full scan of items with a 32-d ``behaviour`` array costs it 0.38 ms per
document, 0.27 ms with the same vector as one Binary (5,000 items, bench/README.md); a
member's state with its 384-d taste vector as an array costs it ~3 ms per document read by
``_id``, ~0.3 ms with the vector as one Binary (issue 12). So vectors our code writes into
MongoDB — the embedding cache's entries, items' ``behaviour`` (``opendisco train``) and the
members' taste and behaviour vectors in ``user_state`` — are BSON Binary vectors: the
subtype says "vector", the first byte the dtype (float32), the length the dimension;
pymongo writes them (``Binary.from_vector``) and any MongoDB-protocol server stores them.

Reading is lenient about the *form* (the older forms still read: raw float32 bytes of
subtype 0 in the embedding cache, lists of numbers in items and in older member states) and
strict about the *content*: :func:`read_vector` returns ``None`` for a wrong dtype, a length
that is not a whole number of float32s, a dimension other than the expected one, so a caller
re-encodes or rejects instead of indexing a wrong vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from bson.binary import Binary, BinaryVectorDtype

__all__ = ["VECTOR_SUBTYPE", "as_vector", "read_vector", "store_vector", "vector_values"]

VECTOR_SUBTYPE = 9  # BSON binary subtype "vector"
_FLOAT32 = BinaryVectorDtype.FLOAT32.value[0]  # the dtype byte, 0x27
_F4 = np.dtype("<f4")


def store_vector(vector: Sequence[float] | np.ndarray) -> Binary:
    """``vector`` as a BSON float32 Binary vector: ``[0x27, 0x00]`` + little-endian float32."""
    data = np.asarray(vector, dtype=_F4)
    return Binary(bytes((_FLOAT32, 0)) + data.tobytes(), VECTOR_SUBTYPE)


def read_vector(value: Any, dim: int | None = None) -> np.ndarray | None:
    """The float32 array stored in ``value`` (a Binary vector, or raw float32 bytes of the
    generic subtype: the embedding cache's first form), or ``None`` if ``value`` is not one
    or not of ``dim`` dimensions. Values are not checked (see the callers)."""
    if not isinstance(value, bytes):  # bson.Binary is a bytes subclass
        return None
    subtype = value.subtype if isinstance(value, Binary) else 0
    if subtype == VECTOR_SUBTYPE:
        if len(value) < 2 or value[0] != _FLOAT32 or value[1] != 0:
            return None
        raw = memoryview(value)[2:]
    elif subtype == 0:
        raw = memoryview(value)
    else:
        return None
    if len(raw) % _F4.itemsize:
        return None
    vec = np.frombuffer(raw, dtype=_F4)
    if dim is not None and vec.shape != (dim,):
        return None
    return vec


def as_vector(value: Any) -> np.ndarray | None:
    """A stored vector in either form — a BSON float32 vector (or raw float32 bytes:
    :func:`read_vector`) or a flat sequence of numbers (older documents, JSON sources) — as an
    array; ``None`` when absent or not a flat vector."""
    if isinstance(value, bytes):
        return read_vector(value)
    if value is None:
        return None
    try:
        vec = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return vec if vec.ndim == 1 else None


def vector_values(vec: np.ndarray) -> list[float]:
    """A float32 array as Python floats with the shortest text that reads back to the same
    float32 (``0.1``, not ``0.10000000149011612``): what JSON documents and hashes carry."""
    native = np.ascontiguousarray(vec, dtype=np.float32)
    return orjson.loads(orjson.dumps(native, option=orjson.OPT_SERIALIZE_NUMPY))
