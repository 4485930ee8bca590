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

__all__ = ["ServedList", "decode_list", "encode_list", "sample_rows"]


@dataclass(frozen=True)
class ServedList:
    """One served answer as the ranker saw it (references, encoded later by the flusher).

    ``X`` rows align with ``ids`` (every scored candidate); ``shown`` are the rows in the
    order shown; ``propensity[p]`` the probability that the policy put ``shown[p]`` at slot
    ``p`` given the slots before it (1.0 for a deterministic answer); ``pool``/``pool_w`` the
    rows and weights an explored answer was sampled from (Plackett–Luce, see ``rerank``).
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
    rows, incl = sample_rows(n, [*s.shown, *s.pool], max_rows, rng)
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
        "policy": _finite_values(dict(s.policy)),
    }
    if s.X is not None and len(rows):
        doc["X"] = Binary(np.ascontiguousarray(s.X[rows], dtype="<f4").tobytes())
    if s.experiments:
        doc["experiments"] = [_finite_values(dict(e)) for e in s.experiments]
    if s.pool:
        doc["pool"] = [pos[int(r)] for r in s.pool]
        doc["pool_w"] = [_finite(w) for w in s.pool_w]
    return doc


def _finite(x: Any) -> float | None:
    """A float for the store; NaN and infinities as None (FerretDB closes the connection on a
    NaN, so one list held the whole log back as if the store were down; an infinity it
    refuses)."""
    f = float(x)
    return f if math.isfinite(f) else None


def _finite_values(value: Any) -> Any:
    """``value`` with every non-finite float in it (nested dicts and lists) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_values(v) for v in value]
    return value


def decode_list(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document with ``X`` as a float64 matrix (rows x features; empty if absent).
    Bytes that are not whole rows of its features (a document cut short or written by other
    code) decode to no rows: training and off-policy evaluation skip that list (``no_rows``)
    instead of failing on it."""
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
