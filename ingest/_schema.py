"""The declared schema of MongoDB ``items`` (docs/architecture.md) as one pure validator.

``validate_item`` returns a normalised copy (only declared fields, UTC datetimes, floats) or
raises :class:`DocumentInvalid` whose message names the field and the problem; that message is
what lands in ``dead_letters.reason``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from opendisco._domain import KINDS, is_api_id
from opendisco._exceptions import DocumentInvalid
from opendisco._stored import VECTOR_SUBTYPE, read_vector, vector_values

__all__ = [
    "ITEM_FIELDS",
    "KINDS",
    "MAX_ID_BYTES",
    "MAX_KEYWORD_BYTES",
    "indexable_id",
    "is_tombstone",
    "source_version",
    "validate_item",
    "vector_problem",
]

MAX_ID_BYTES = 512
MAX_KEYWORD_BYTES = 1024  # tags/category/gender: far below Lucene's 32 KB term limit
MAX_TEXT_BYTES = 64_000
MAX_TAGS = 100
MAX_DEPTH = 8  # nesting of any (even undeclared) field
MIN_YEAR, MAX_YEAR = 1000, 9999
MAX_VERSION = 2**62
# OpenSearch ``float`` fields hold float32: a larger double becomes Infinity and is refused
F32_MAX = float(np.finfo(np.float32).max)
# vector components: the float16 copy the reranker reads (``vec_f16``) must stay finite
F16_MAX = float(np.finfo(np.float16).max)

ITEM_FIELDS = (
    "kind",
    "title",
    "description",
    "tags",
    "category",
    "owner_id",
    "created_at",
    "updated_at",
    "version",
    "deleted",
    "year",
    "location",
    "popularity",
    "quality",
    "available",
    "exposure_cap",
    "gender",
    "age",
    "pref_genders",
    "pref_age_min",
    "pref_age_max",
    "behaviour",
)


def indexable_id(value: Any) -> bool:
    """Whether ``value`` can be an OpenSearch ``_id``: a non-empty string of at most
    ``MAX_ID_BYTES`` UTF-8 bytes. OpenSearch refuses any other id for the whole bulk request
    (``action_request_validation_exception``), not just for its own action."""
    return type(value) is str and 0 < len(value.encode("utf-8")) <= MAX_ID_BYTES


def source_version(value: Any) -> int | None:
    """A ``version`` value as validation reads it (an int, or a float holding one, in
    [1, ``MAX_VERSION``]), else ``None``: the one rule for every step that needs the version
    of a document that may be invalid (deletes of its stale copy, reconciliation)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_VERSION:
        return value
    return None


def is_tombstone(doc: Any) -> bool:
    """``deleted: true`` with a version: deleted whatever its id and other fields hold (sync
    deletes it, or settles its dead letter when its id was never indexable; a build skips it;
    nothing is refused). A tombstone of ``_id: 7`` was refused again at its new version by
    sync (a record reopened for a deleted document) and counted ``invalid`` by ``verify``
    while a reindex skipped it."""
    return (
        isinstance(doc, Mapping)
        and doc.get("deleted") is True
        and source_version(doc.get("version")) is not None
    )


def _fail(field: str, problem: str) -> DocumentInvalid:
    return DocumentInvalid(f"{field}: {problem}")


# values that cannot nest, skipped by an exact type test (a 32-d list of floats is one level)
_LEAVES = frozenset({str, int, float, bool, type(None), datetime})


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, Mapping):
        children: Any = value.values()
    elif isinstance(value, list | tuple):
        children = value
    else:
        return level
    deepest = level + 1
    for v in children:
        if type(v) not in _LEAVES:
            deepest = max(deepest, _depth(v, level + 1))
    return deepest


def _str(doc: Mapping[str, Any], field: str, *, required: bool, max_bytes: int) -> str | None:
    value = doc.get(field)
    if value is None:
        if required:
            raise _fail(field, "required")
        return None
    if type(value) is not str:  # exactly: BSON JavaScript code decodes to a str subclass
        raise _fail(field, f"expected a string, got {type(value).__name__}")
    if len(value.encode("utf-8")) > max_bytes:
        raise _fail(field, f"longer than {max_bytes} bytes")
    return value


def _int(
    doc: Mapping[str, Any], field: str, *, lo: int | None = None, hi: int | None = None
) -> int | None:
    value = doc.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        else:
            raise _fail(field, f"expected an integer, got {type(value).__name__}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _fail(field, f"{value} outside [{lo}, {hi}]")
    return value


def exposure_cap(doc: Mapping[str, Any]) -> int | None:
    """The item's own ``exposure_cap`` as it is indexed (None: none stated); a value that is
    not an integer in [0, 2³¹ − 1] (a whole double is one) raises :class:`DocumentInvalid`."""
    return _int(doc, "exposure_cap", lo=0, hi=2**31 - 1)


def _float(doc: Mapping[str, Any], field: str, lo: float, hi: float | None) -> float | None:
    value = doc.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(field, f"expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise _fail(field, f"not finite ({value})")
    if value < lo or (hi is not None and value > hi):
        raise _fail(field, f"{value} outside [{lo}, {hi}]")
    return value


def _bool(doc: Mapping[str, Any], field: str, default: bool) -> bool:
    value = doc.get(field, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _fail(field, f"expected a boolean, got {type(value).__name__}")
    return value


def _date(doc: Mapping[str, Any], field: str, *, required: bool) -> datetime | None:
    value = doc.get(field)
    if value is None:
        if required:
            raise _fail(field, "required")
        return None
    if not isinstance(value, datetime):
        # out-of-range BSON dates arrive as bson.DatetimeMS (DATETIME_AUTO codec)
        raise _fail(field, f"expected a datetime in years 1..9999, got {value!r}")
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise _fail(field, f"year {value.year} outside [{MIN_YEAR}, {MAX_YEAR}]")
    return value


def _keywords(doc: Mapping[str, Any], field: str) -> list[str]:
    value = doc.get(field)
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise _fail(field, f"expected a list of strings, got {type(value).__name__}")
    if len(value) > MAX_TAGS:
        raise _fail(field, f"more than {MAX_TAGS} entries")
    out = []
    for i, v in enumerate(value):
        if type(v) is not str:
            raise _fail(f"{field}[{i}]", f"expected a string, got {type(v).__name__}")
        if len(v.encode("utf-8")) > MAX_KEYWORD_BYTES:
            raise _fail(f"{field}[{i}]", f"longer than {MAX_KEYWORD_BYTES} bytes")
        out.append(v)
    return out


def vector_problem(value: Any, field: str, dim: int | None) -> str | None:
    """Why ``value`` is no valid ``field`` vector (the rule :func:`validate_item` applies),
    or ``None`` when it is one."""
    try:
        _vector({field: value}, field, dim)
    except DocumentInvalid as exc:
        return str(exc)
    return None


def _vector(doc: Mapping[str, Any], field: str, dim: int | None) -> list[float] | None:
    value = doc.get(field)
    if value is None:
        return None
    if isinstance(value, bytes):  # a BSON float32 vector (what ``opendisco train`` writes)
        vec = read_vector(value) if getattr(value, "subtype", 0) == VECTOR_SUBTYPE else None
        if vec is None:
            raise _fail(field, "expected a float32 BSON vector (subtype 9)")
        if dim is not None and len(vec) != dim:
            raise _fail(field, f"expected {dim} dimensions, got {len(vec)}")
        if not np.isfinite(vec).all():
            raise _fail(field, "components must be finite numbers")
        _check_components(field, vec)
        return vector_values(vec)
    if not isinstance(value, list | tuple):
        raise _fail(field, f"expected a list of numbers, got {type(value).__name__}")
    if dim is not None and len(value) != dim:
        raise _fail(field, f"expected {dim} dimensions, got {len(value)}")
    out = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise _fail(field, f"components must be finite numbers, got {x!r}")
        out.append(float(x))
    _check_components(field, np.asarray(out))
    return out


def _check_components(field: str, vec: np.ndarray) -> None:
    """What OpenSearch's cosine k-NN field and the packed float16 copy can hold."""
    if float(np.abs(vec).max(initial=0.0)) > F16_MAX:
        raise _fail(field, f"components must be within +-{F16_MAX:g}")
    if not vec.astype(np.float32).any():  # what the k-NN field stores: float32
        raise _fail(field, "zero vector (undefined cosine)")


def _location(doc: Mapping[str, Any]) -> dict[str, float] | None:
    value = doc.get("location")
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"lat", "lon"}:
        raise _fail("location", "expected {lat, lon}")
    lat = _float(value, "lat", -90.0, 90.0)
    lon = _float(value, "lon", -180.0, 180.0)
    if lat is None or lon is None:
        raise _fail("location", "lat and lon are required")
    return {"lat": lat, "lon": lon}


def validate_item(doc: Mapping[str, Any], *, behaviour_dim: int | None = None) -> dict[str, Any]:
    """Check ``doc`` against the items schema; return the normalised declared fields.

    Undeclared fields are allowed (other tools may annotate items) but are not indexed;
    they still count towards the nesting limit.
    """
    if not isinstance(doc, Mapping):
        raise _fail("document", f"expected a mapping, got {type(doc).__name__}")
    for key, value in doc.items():  # the field that nests too deep, named in the reason
        if type(value) not in _LEAVES and _depth(value, 1) > MAX_DEPTH:
            raise _fail(str(key), f"nested deeper than {MAX_DEPTH} levels")
    doc_id = doc.get("_id")
    if type(doc_id) is not str or not doc_id:
        raise _fail("_id", f"expected a non-empty string, got {doc_id!r}")
    if len(doc_id.encode("utf-8")) > MAX_ID_BYTES:
        raise _fail("_id", f"longer than {MAX_ID_BYTES} bytes")
    # indexed, it was served, and every event batch naming it was a 422 as a whole
    _api_id("_id", doc_id, "an API id")
    kind = _str(doc, "kind", required=True, max_bytes=64)
    if kind not in KINDS:
        raise _fail("kind", f"{kind!r} not one of {sorted(KINDS)}")
    version = _int(doc, "version", lo=1, hi=MAX_VERSION)
    if version is None:
        raise _fail("version", "required (monotonic per document)")
    out: dict[str, Any] = {
        "_id": doc_id,
        "kind": kind,
        "title": _str(doc, "title", required=True, max_bytes=4096),
        "description": _str(doc, "description", required=False, max_bytes=MAX_TEXT_BYTES) or "",
        "tags": _keywords(doc, "tags"),
        "category": _str(doc, "category", required=False, max_bytes=MAX_KEYWORD_BYTES),
        "owner_id": _str(doc, "owner_id", required=False, max_bytes=MAX_ID_BYTES),
        "created_at": _date(doc, "created_at", required=False),
        "updated_at": _date(doc, "updated_at", required=True),
        "version": version,
        "deleted": _bool(doc, "deleted", False),
        "year": _int(doc, "year", lo=MIN_YEAR, hi=MAX_YEAR),
        "location": _location(doc),
        "popularity": _float(doc, "popularity", 0.0, F32_MAX) or 0.0,
        "quality": _float(doc, "quality", 0.0, 1.0),
        "available": _bool(doc, "available", True),
        "exposure_cap": exposure_cap(doc),
        "gender": _str(doc, "gender", required=False, max_bytes=64),
        "age": _int(doc, "age", lo=0, hi=150),
        "pref_genders": _keywords(doc, "pref_genders"),
        "pref_age_min": _int(doc, "pref_age_min", lo=0, hi=150),
        "pref_age_max": _int(doc, "pref_age_max", lo=0, hi=150),
        "behaviour": _vector(doc, "behaviour", behaviour_dim),
    }
    if not out["title"].strip():
        raise _fail("title", "empty")
    lo, hi = out["pref_age_min"], out["pref_age_max"]
    if lo is not None and hi is not None and lo > hi:
        raise _fail("pref_age_min", f"{lo} above pref_age_max {hi}")
    owner = out["owner_id"]
    if kind == "profile" and owner:
        # a member no API call can name: a hide of the profile blocked an id no viewer has
        # (" sb" is not sb); another kind's owner ("Acme Ltd") is no member
        _api_id("owner_id", owner, "a member's API id")
    elif kind == "profile" and not out["deleted"]:
        # the member it belongs to: without it a hide of the profile blocked nobody (its
        # member went on seeing the hider), a like of it matched nobody
        raise _fail("owner_id", "required for a profile (the member it belongs to)")
    return out


def _api_id(field: str, value: str, what: str) -> None:
    """``value`` is an id the API takes (:func:`opendisco._domain.is_api_id`), else the
    document is refused naming ``field``: events and ``/similar`` refuse any other."""
    if not is_api_id(value):
        raise _fail(field, f"{value!r} is not {what} (letters, digits, _.:@-)")
