"""A served list as the ranker saw it, and the document the served-list log stores of it.

The document (collection ``served_lists``, ``_id`` = request id) is described in
:mod:`._served_log`. Pure: :func:`encode_list` samples the rows (``sample_rows``) and packs the
feature matrix as float32 bytes; :func:`decode_list` unpacks it for training and off-policy
evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from bson import Binary

from opendisco._store import finite_values

__all__ = ["ServedList", "decode_list", "encode_list", "malformed", "sample_rows"]


@dataclass(frozen=True)
class ServedList:
    """One served answer as the ranker saw it (references, encoded later by the flusher).

    ``X`` rows align with ``ids`` (every scored candidate); ``shown`` are the rows in the
    order shown; ``propensity[p]`` the probability that the policy put ``shown[p]`` at slot
    ``p`` given the slots before it (1.0 for a deterministic answer); ``pool``/``pool_w`` the
    rows and weights an explored answer was sampled from (Plackett–Luce, see ``rerank``);
    ``filled`` the rows a failed source's page was filled with (the degraded fallback's
    candidates, ``serving.FillSource``: not what the sources proposed).
    """

    request_id: str
    at: datetime
    user_id: str | None
    surface: str
    requested_surface: str
    version: str
    degraded: bool
    k: int
    feature_names: Sequence[str]
    X: np.ndarray | None
    ids: Sequence[str]
    shown: Sequence[int]
    propensity: Sequence[float] = ()
    explored: bool = False
    policy: Mapping[str, Any] = field(default_factory=dict)
    pool: Sequence[int] = ()
    pool_w: Sequence[float] = ()
    #: the experiments the answer took part in (experiment, arm, design, unit, candidates' arms)
    experiments: Sequence[Mapping[str, Any]] = ()
    filled: Sequence[int] = ()


def sample_rows(
    n: int, keep: Sequence[int], max_rows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rows to log and their inclusion probabilities (pure but for ``rng``): every ``keep``
    row (probability 1), then a uniform sample of the others filling ``max_rows``."""
    must = np.unique(np.asarray([r for r in keep if 0 <= r < n], dtype=np.int64))
    if n <= max_rows:
        return np.arange(n, dtype=np.int64), np.ones(n)
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), must, assume_unique=True)
    room = max(0, max_rows - len(must))
    picked = np.sort(rng.choice(rest, size=min(room, len(rest)), replace=False))
    rows = np.concatenate([must, picked])
    incl = np.concatenate([np.ones(len(must)), np.full(len(picked), len(picked) / len(rest))])
    order = np.argsort(rows, kind="stable")
    return rows[order], incl[order]


def encode_list(s: ServedList, max_rows: int, rng: np.random.Generator) -> dict[str, Any]:
    n = len(s.ids)
    rows, incl = sample_rows(n, [*s.shown, *s.pool, *s.filled], max_rows, rng)
    pos = {int(r): i for i, r in enumerate(rows.tolist())}  # candidate row -> logged row
    doc: dict[str, Any] = {
        "_id": s.request_id,
        "at": s.at,
        "user_id": s.user_id,
        "surface": s.surface,
        "requested_surface": s.requested_surface,
        "version": s.version,
        "degraded": s.degraded,
        "k": s.k,
        "features": list(s.feature_names),
        "ids": [s.ids[r] for r in rows.tolist()],
        "incl": [round(float(p), 6) for p in incl],
        "candidates": n,
        "shown": [pos[int(r)] for r in s.shown],
        "propensity": [_finite(p) for p in s.propensity],
        "explored": s.explored,
        "policy": finite_values(dict(s.policy)),
    }
    if s.X is not None and len(rows):
        doc["X"] = Binary(np.ascontiguousarray(s.X[rows], dtype="<f4").tobytes())
    if s.experiments:
        doc["experiments"] = [finite_values(dict(e)) for e in s.experiments]
    if s.pool:
        doc["pool"] = [pos[int(r)] for r in s.pool]
        doc["pool_w"] = [_finite(w) for w in s.pool_w]
    if s.filled:
        doc["filled"] = [pos[int(r)] for r in s.filled]
    return doc


def _finite(x: Any) -> float | None:
    """A float for the store; NaN and infinities as None (FerretDB closes the connection on a
    NaN, so one list held the whole log back as if the store were down; an infinity it
    refuses)."""
    f = float(x)
    return f if math.isfinite(f) else None


def decode_list(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document with ``X`` as a float64 matrix (rows x features; empty if absent).
    Bytes that are not whole rows of its features (a document cut short or written by other
    code) decode to no rows: training and off-policy evaluation skip that list (``no_rows``)
    instead of failing on it. A document whose fields are not of the types :func:`encode_list`
    writes is a ValueError naming the first that is not (:func:`malformed`)."""
    problem = malformed(doc)
    if problem:
        raise ValueError(f"served list {doc.get('_id')!r}: {problem}")
    out = dict(doc)
    names = list(doc.get("features") or [])
    raw = doc.get("X")
    if raw is not None and names:
        data = bytes(raw)
        whole = len(data) - len(data) % (4 * len(names))
        X = np.frombuffer(data[:whole], dtype="<f4").astype(np.float64).reshape(-1, len(names))
        out["X"] = X if whole == len(data) else X[:0]
    else:
        out["X"] = np.zeros((len(doc.get("ids") or []), len(names)))
    return out


def _strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _rows(v: Any, n: int) -> bool:
    return isinstance(v, list) and all(type(x) is int and 0 <= x < n for x in v)


def _numbers(v: Any, missing: bool = True) -> bool:
    """A list of numbers (and of None where a non-finite one was stored, with ``missing``)."""
    return isinstance(v, list) and all(
        (missing and x is None) or (isinstance(x, int | float) and not isinstance(x, bool))
        for x in v
    )


def malformed(doc: Mapping[str, Any]) -> str | None:
    """Why a stored document is not a served list as :func:`encode_list` writes it (a field
    missing or of another type, a row index past its rows), or None. Readers skip such a
    document (written by other code, or edited): ``train ltr`` and ``eval offpolicy`` failed
    on one with a TypeError traceback."""
    at = doc.get("at")
    if not isinstance(at, datetime):
        return "'at' is not a time"
    if doc.get("user_id") is not None and not isinstance(doc.get("user_id"), str):
        return "'user_id' is not a string"
    ids = doc.get("ids")
    if not _strs(ids):
        return "'ids' is not a list of item ids"
    if not _strs(doc.get("features") or []):
        return "'features' is not a list of names"
    if doc.get("X") is not None and not isinstance(doc["X"], bytes):
        return "'X' is not binary"
    for key in ("shown", "pool", "filled"):
        if not _rows(doc.get(key) or [], len(ids)):
            return f"'{key}' is not a list of its row numbers"
    for key in ("propensity", "pool_w", "incl"):
        if not _numbers(doc.get(key) or [], missing=key != "pool_w"):
            return f"'{key}' is not a list of numbers"
    if len(doc.get("pool_w") or []) != len(doc.get("pool") or []):
        return "'pool_w' does not weigh 'pool'"
    return None
