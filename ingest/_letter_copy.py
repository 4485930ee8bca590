"""What a dead-letter record keeps of a refused document (pure): a copy every MongoDB-protocol
server stores and reads back, bounded in size (MongoDB keeps the document itself)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import bson
from bson import DatetimeMS
from bson.errors import BSONError

__all__ = ["MAX_LETTER_DOC", "bounded_copy", "storable"]

#: the largest copy of a refused document a record keeps (BSON bytes); a larger one keeps its
#: id and size. A document near MongoDB's 16 MiB limit made a record over it, which the
#: driver refuses before any write (``DocumentTooLarge``): every pass that refused it failed.
MAX_LETTER_DOC = 1 << 20


def _field(key: Any) -> str:
    """A field name every server stores in an update (FerretDB refuses ``$x`` and ``a.b``
    there, and pymongo then fails on its answer): fullwidth ``＄`` and ``．`` instead."""
    name = str(key).replace(".", "\uff0e")
    return "\uff04" + name[1:] if name.startswith("$") else name


def storable(value: Any, depth: int = 0) -> Any:
    """A copy any MongoDB-protocol server stores (FerretDB refuses NaN/Inf and drops the link)."""
    if depth > 40:
        return repr(value)[:1000]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, DatetimeMS):  # out-of-range date: default codecs cannot read it back
        return f"DatetimeMS({int(value)})"
    if isinstance(value, Mapping):
        return {_field(k): storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v, depth + 1) for v in value]
    return value


def bounded_copy(doc: Any) -> dict[str, Any]:
    """What a record keeps of the refused ``doc``: :func:`storable`, up to
    :data:`MAX_LETTER_DOC`, else its id and size."""
    if not isinstance(doc, Mapping):
        return {"value": repr(doc)[:1000]}
    copy = storable(doc)
    try:
        size = len(bson.encode(copy))
    except (BSONError, OverflowError):  # the write's own fallback (``_slim``) has it
        return copy
    if size <= MAX_LETTER_DOC:
        return copy
    return {"_id": copy.get("_id"), "too_large": True, "bytes": size}
