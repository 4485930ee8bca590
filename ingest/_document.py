"""Pure mapping from a validated item to the text we embed and the OpenSearch document.

This runs once per document in every build, so it is kept lean: the content vector stays a
numpy array (the bulk encoder writes it with orjson), and the content hash takes the fast
path of one ``json.dumps`` whenever the document has no non-finite float (always, for a
validated item); its text is unchanged, so hashes stored by earlier builds still verify.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from ._packed import PACKED_FIELD, pack_vectors
from ._schema import ITEM_FIELDS

__all__ = [
    "HASHED_EXCLUDE",
    "build_index_doc",
    "content_hash",
    "embedding_text",
    "text_key",
    "to_index_doc",
]

# fields of the OpenSearch document not covered by the content hash (derived from vectors)
HASHED_EXCLUDE = frozenset({"embedding", PACKED_FIELD, "content_hash"})

# every declared item field except the bookkeeping ones, which map to other names
_COPIED = tuple(
    f for f in ITEM_FIELDS if f not in {"created_at", "updated_at", "version", "deleted"}
)


def embedding_text(item: Mapping[str, Any]) -> str:
    """``title. description. tag, tag`` — the text behind the content vector."""
    parts = [
        str(item.get("title") or "").strip().rstrip("."),
        str(item.get("description") or "").strip().rstrip("."),
    ]
    tags = item.get("tags") or []
    if tags:
        parts.append(", ".join(str(t) for t in tags))
    return ". ".join(p for p in parts if p)


def text_key(model_name: str, text: str) -> str:
    """Embedding-cache key: sha256 of the model name and the exact text."""
    return hashlib.sha256(f"{model_name}\x00{text}".encode()).hexdigest()


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def content_hash(doc: Mapping[str, Any]) -> str:
    """sha256 of an OpenSearch item document minus its vector and hash (verify compares it)."""
    body = {k: v for k, v in doc.items() if k not in HASHED_EXCLUDE and v is not None}
    try:
        text = json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (ValueError, TypeError):  # NaN/Infinity (hashed as strings), non-dict mappings
        text = json.dumps(
            _canonical(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    return hashlib.sha256(text.encode()).hexdigest()


# rank_features accept only positive *normal* float32 values (Lucene refuses 1e-40 or a
# double that rounds to 0); a smaller one is left out: absent means "no boost"
_MIN_FEATURE = float(np.finfo(np.float32).tiny)


def _features(item: Mapping[str, Any]) -> dict[str, float]:
    feats = {}
    pop = float(math.log1p(item.get("popularity") or 0.0))
    if pop >= _MIN_FEATURE:
        feats["popularity"] = pop
    q = item.get("quality")
    if q is not None and q >= _MIN_FEATURE:
        feats["quality"] = float(q)
    return feats


def to_index_doc(item: Mapping[str, Any], embedding: Sequence[float] | None) -> dict[str, Any]:
    """The OpenSearch ``_source`` of a validated item (see ``validate_item``).

    ``embedding`` is the content vector of ``embedding_text(item)``: a numpy array is kept
    as it is (float32, written by orjson), any other sequence becomes a list of floats;
    ``None`` builds the document without it (what ``verify`` hashes). ``behaviour`` flows
    through unchanged; the packed float16 copy of both vectors (``vec_f16``, read by the
    reranker from the candidate hits) is derived here, so it always matches them.
    """
    doc: dict[str, Any] = {"id": item["_id"]}
    for field in _COPIED:
        value = item.get(field)
        if value is not None and value != []:
            doc[field] = value
    for field in ("created_at", "updated_at"):
        value = item.get(field)
        if value is not None:
            doc[field] = _iso(value)
    feats = _features(item)
    if feats:
        doc["features"] = feats
    doc["source_version"] = int(item["version"])
    doc["content_hash"] = content_hash(doc)
    if embedding is not None:
        if isinstance(embedding, np.ndarray):
            vector: Any = np.asarray(embedding, dtype=np.float32)
        else:
            vector = [float(x) for x in embedding]
        doc["embedding"] = vector
        doc[PACKED_FIELD] = pack_vectors(vector, doc.get("behaviour"))
    return doc


build_index_doc = to_index_doc
