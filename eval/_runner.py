"""The evaluation runner: one code path for every :class:`Recommender`.

:func:`evaluate` asks each model for top-k lists of the stage's evaluable users (excluding
what each user already has in the fitting data), maps ids back to catalogue indices, and
computes accuracy metrics (overall, cold-start users, cold items) and exposure metrics.
Latency is per request when the model records it (``model.latencies_ms``, the served
pipeline does) and otherwise the batch time divided by the users in the batch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rich.table import Table
from scipy.special import stdtr

from opendisco._exceptions import InvalidInput
from opendisco._store import finite_values as finite

from . import _metrics as m
from ._protocol import Recommender
from ._split import Stage

__all__ = [
    "Comparison",
    "EvalReport",
    "ModelResult",
    "PairedDiff",
    "accuracy",
    "evaluate",
    "paired_difference",
    "paired_values",
    "per_user_accuracy",
]

ACCURACY = ("recall", "ndcg", "map", "hitrate")


@dataclass
class ModelResult:
    name: str
    users: int
    metrics: dict[str, float]
    slices: dict[str, dict[str, float]]
    latency: dict[str, Any] = field(default_factory=dict)
    #: accuracy metric -> its value for each scored user, in the order of the users scored
    #: (paired comparisons of two models: ``opendisco.eval.paired_difference``)
    per_user: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class PairedDiff:
    """``b - a`` of one metric over the same users: mean, standard error, paired t-test."""

    metric: str
    a: float
    b: float
    diff: float
    se: float
    n: int
    p_value: float | None

    @property
    def ci95(self) -> tuple[float, float]:
        return self.diff - 1.96 * self.se, self.diff + 1.96 * self.se


@dataclass(frozen=True)
class Comparison:
    """One paired difference of the report: ``model`` − ``against``."""

    model: str
    against: str
    diff: PairedDiff

    def line(self) -> str:
        d = self.diff
        z = d.diff / d.se if d.se > 0 else float("nan")
        apart = f", {z:+.1f} SE" if math.isfinite(z) else ""
        return (
            f"{self.model} − {self.against}: {d.metric} {d.diff:+.4f} "
            f"(SE {d.se:.4f}{apart}, {d.n} users)"
        )


def paired_difference(a: ModelResult, b: ModelResult, metric: str) -> PairedDiff:
    """The per-user difference ``b - a`` of ``metric`` (both scored with ``per_user=True`` on
    the same users): mean and standard error ``sd(d) / sqrt(n)``."""
    return paired_values(a.per_user.get(metric, []), b.per_user.get(metric, []), metric)


def paired_values(a: Any, b: Any, metric: str) -> PairedDiff:
    """Pure: :class:`PairedDiff` of two equally long per-unit value sequences, ``b - a``."""
    xa = np.asarray(a, dtype=np.float64)
    xb = np.asarray(b, dtype=np.float64)
    if len(xa) != len(xb) or len(xa) == 0:
        raise InvalidInput(f"{metric}: both models need per-user values for the same users")
    d = xb - xa
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    p = None
    if n > 1 and np.any(d != d[0]):
        p = float(2 * stdtr(n - 1, -abs(d.mean() / se)))  # paired t-test, n - 1 df
    return PairedDiff(metric, float(xa.mean()), float(xb.mean()), float(d.mean()), se, n, p)


@dataclass
class EvalReport:
    dataset: str
    stage: str
    k: int
    split: dict[str, Any]
    models: list[ModelResult]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "paired": [asdict(c) for c in self.comparisons()]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> EvalReport:
        """The report :meth:`as_dict` (or :meth:`to_json`) wrote; ``paired`` is derived from
        the models' per-user values, made again by :meth:`comparisons`."""
        fields = {key: v for key, v in doc.items() if key != "paired"}
        return cls(**{**fields, "models": [ModelResult(**r) for r in doc["models"]]})

    def comparisons(self) -> list[Comparison]:
        """The paired NDCG@k differences the table's claims rest on, over the same users:
        each served model against the best other model, and the learnt ranker against the
        served order it reranks (``served+ltr`` − ``served``); without a served model the
        best against the runner-up (are they apart by more than noise? Both were picked by
        these very means, so that difference leans up)."""
        metric = f"ndcg@{self.k}"
        scored = [r for r in self.models if r.per_user.get(metric)]
        served = [r for r in scored if r.name.startswith("served")]
        others = sorted(
            (r for r in scored if not r.name.startswith("served")),
            key=lambda r: -np.nan_to_num(r.metrics.get(metric, np.nan), nan=-np.inf),
        )
        pairs = [(r, others[0]) for r in served] if others else []
        by = {r.name: r for r in served}
        if "served+ltr" in by and "served" in by:
            pairs.append((by["served+ltr"], by["served"]))
        if not served and len(others) > 1:
            pairs = [(others[0], others[1])]
        return [Comparison(a.name, b.name, paired_difference(b, a, metric)) for a, b in pairs]

    def to_json(self) -> str:
        """Strict JSON: an empty slice's NaN mean is ``null`` (``NaN`` is not JSON)."""
        return json.dumps(finite(self.as_dict()), indent=2, sort_keys=False, allow_nan=False)

    def columns(self) -> list[str]:
        k = self.k
        return [
            *(f"{a}@{k}" for a in ACCURACY),
            f"ndcg@{k} SE",
            "coverage",
            "novelty",
            "gini",
            f"cold_users.ndcg@{k}",
            f"cold_items.recall@{k}",
            "latency_p50_ms",
            "latency_p99_ms",
        ]

    def rows(self) -> list[list[str]]:
        out = []
        k = self.k
        for r in self.models:
            vals = [r.metrics.get(f"{a}@{k}") for a in ACCURACY]
            vals.append(standard_error(r.per_user.get(f"ndcg@{k}", [])))
            vals += [r.metrics.get("coverage"), r.metrics.get("novelty"), r.metrics.get("gini")]
            vals += [
                r.slices.get("cold_users", {}).get(f"ndcg@{k}"),
                r.slices.get("cold_items", {}).get(f"recall@{k}"),
            ]
            cells = [_fmt(v) for v in vals]
            for key in ("p50_ms", "p99_ms"):
                lat = r.latency.get(key)
                mark = "" if r.latency.get("per_request") else "*"
                cells.append("-" if lat is None else f"{lat:.2f}{mark}")
            out.append([r.name, *cells])
        return out

    def notes(self) -> str:
        s = self.split
        first = self.models[0] if self.models else None
        cu = first.slices.get("cold_users", {}).get("users", 0) if first else 0
        ci = first.slices.get("cold_items", {}).get("users", 0) if first else 0
        text = (
            f"{self.dataset or 'dataset'}, stage={self.stage}, {first.users if first else 0} users "
            f"scored ({cu} cold-start users, {ci} users with cold-item targets)."
        )
        if s:
            text += (
                f" Positives = rating >= {s.get('threshold')}; last {s.get('n_test')} positives "
                f"per user held out as test, the {s.get('n_val')} before them as validation."
            )
        text += " Latency marked * is batch time / users (not a per-request figure)."
        pairs = self.comparisons()
        if pairs:
            text += " Paired over the same users: " + "; ".join(c.line() for c in pairs) + "."
        return text

    def to_markdown(self) -> str:
        head = ["model", *self.columns()]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        return "\n".join(lines) + "\n\n" + self.notes() + "\n"

    def rich_table(self) -> Any:
        table = Table(title=f"opendisco eval: {self.dataset} ({self.stage}, K={self.k})")
        table.add_column("model", style="bold")
        short = {
            "coverage": "cov",
            "novelty": "nov",
            "latency_p50_ms": "p50 ms",
            "latency_p99_ms": "p99 ms",
            f"ndcg@{self.k} SE": "ndcg SE",
        }
        for col in self.columns():
            name = short.get(col, col)
            name = name.replace("cold_users.", "cold-u ").replace("cold_items.", "cold-i ")
            table.add_column(name, justify="right", no_wrap=True)
        for row in self.rows():
            table.add_row(*row)
        table.caption = self.notes()
        return table


def standard_error(values: Sequence[float]) -> float | None:
    """The standard error of the mean of per-user values (None below two users)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def per_user_accuracy(
    hits: np.ndarray, targets: Sequence[np.ndarray], k: int
) -> dict[str, np.ndarray]:
    """Recall/NDCG/MAP/HitRate@k of every row of ``hits``."""
    return {
        f"recall@{k}": m.recall_at_k(hits, targets, k),
        f"ndcg@{k}": m.ndcg_at_k(hits, targets, k),
        f"map@{k}": m.average_precision_at_k(hits, targets, k),
        f"hitrate@{k}": m.hit_rate_at_k(hits, k),
    }


def accuracy(hits: np.ndarray, targets: Sequence[np.ndarray], k: int) -> dict[str, float]:
    """Mean Recall/NDCG/MAP/HitRate@k over the rows of ``hits``."""
    if len(targets) == 0:
        return {f"{a}@{k}": float("nan") for a in ACCURACY}
    return {name: float(v.mean()) for name, v in per_user_accuracy(hits, targets, k).items()}


def _to_indices(
    lists: Sequence[Sequence[str]], stage: Stage, excluded: Sequence[set[int]], k: int
) -> np.ndarray:
    recs = np.full((len(lists), k), -1, dtype=np.int64)
    index = stage.item_index
    for row, items in enumerate(lists):
        seen: set[int] = set()
        col = 0
        for item in items:
            i = index.get(item, -1)
            if i < 0 or i in seen or i in excluded[row]:
                continue
            seen.add(i)
            recs[row, col] = i
            col += 1
            if col == k:
                break
    return recs


def evaluate(
    models: Mapping[str, Recommender] | Sequence[Recommender],
    stage: Stage,
    *,
    k: int = 10,
    users: Sequence[int] | None = None,
    batch_size: int = 256,
    dataset: str = "",
    split_info: Mapping[str, Any] | None = None,
    progress: Callable[[str, int], None] | None = None,
    per_user: bool = True,
) -> EvalReport:
    """Score every model on ``stage`` (its evaluable users, or the ``users`` indices given);
    ``per_user`` keeps every user's accuracy values (:attr:`ModelResult.per_user`)."""
    if not isinstance(models, Mapping):
        models = {getattr(mod, "name", type(mod).__name__): mod for mod in models}
    uidx = np.asarray(stage.evaluable if users is None else users, dtype=np.int64)
    user_ids = [stage.users[u] for u in uidx]
    targets = [stage.targets[u] for u in uidx]
    history = [stage.history[u] for u in uidx]
    exclude_ids = [[stage.items[i] for i in h] for h in history]
    excluded = [set(h.tolist()) for h in history]
    cold_user = stage.cold_users[uidx] if len(uidx) else np.zeros(0, bool)
    cold_item_mask = stage.cold_items
    cold_targets = [t[cold_item_mask[t]] for t in targets]
    has_cold = np.array([len(t) > 0 for t in cold_targets], dtype=bool)
    item_users = stage.item_counts
    n_items, n_users = len(stage.items), len(stage.users)

    results = []
    for name, model in models.items():
        lists: list[list[str]] = []
        batch_ms: list[float] = []
        if hasattr(model, "latencies_ms"):
            model.latencies_ms.clear()  # type: ignore[union-attr]
        for start in range(0, len(uidx), batch_size):
            sl = slice(start, start + batch_size)
            t0 = time.perf_counter()
            out = model.recommend_batch(user_ids[sl], k, exclude_ids[sl])
            elapsed = (time.perf_counter() - t0) * 1000
            n = len(user_ids[sl])
            batch_ms.extend([elapsed / max(n, 1)] * n)
            lists.extend(out)
            if progress:
                progress(name, n)
        recs = _to_indices(lists, stage, excluded, k)
        hits = m.hit_matrix(recs, targets)
        metrics = accuracy(hits, targets, k)
        metrics["coverage"] = m.catalogue_coverage(recs, n_items)
        metrics["novelty"] = m.novelty(recs, item_users, n_users)
        metrics["gini"] = m.gini(m.impressions(recs, n_items))
        cu = np.flatnonzero(cold_user)
        slices = {
            "cold_users": {"users": len(cu), **accuracy(hits[cu], [targets[i] for i in cu], k)},
        }
        ci = np.flatnonzero(has_cold)
        ct = [cold_targets[i] for i in ci]
        slices["cold_items"] = {
            "users": len(ci),
            **accuracy(m.hit_matrix(recs[ci], ct), ct, k),
        }
        per_request = list(getattr(model, "latencies_ms", []) or [])
        lat = per_request if per_request else batch_ms
        latency: dict[str, Any] = {"per_request": bool(per_request)}
        if lat:
            latency.update(
                p50_ms=float(np.median(lat)),
                p95_ms=float(np.percentile(lat, 95)),
                p99_ms=float(np.percentile(lat, 99)),
                mean_ms=float(np.mean(lat)),
            )
        rows = (
            {a: v.tolist() for a, v in per_user_accuracy(hits, targets, k).items()}
            if per_user and len(targets)
            else {}
        )
        results.append(ModelResult(name, len(uidx), metrics, slices, latency, rows))
    return EvalReport(dataset, stage.name, k, dict(split_info or {}), results)
