"""``Reranker``: run the configured named steps, keep a trace of what each one changed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np

from ._config import RerankConfig
from ._steps import STEPS, LinearScorer, RerankInputs, RerankState, Scorer, assemble_features
from ._types import CandidateBatch, Features, RerankContext

__all__ = ["RerankResult", "Reranker", "StepRecord", "Trace"]


@dataclass(frozen=True)
class StepRecord:
    name: str
    before: RerankState
    after: RerankState
    ms: float


@dataclass(frozen=True)
class Trace:
    """States before/after every step, kept by reference; materialised to dicts on demand."""

    ids: list[str]
    steps: list[StepRecord]
    X: np.ndarray

    def _ranks(self, order: np.ndarray) -> np.ndarray:
        r = np.full(len(self.ids), -1, dtype=np.int64)
        r[order] = np.arange(order.shape[0])
        return r

    def changes(self, step: str) -> dict[str, dict[str, Any]]:
        """``{item id: {"from": rank|None, "to": rank|None, "delta": score change}}`` for every
        item whose rank or score the named step changed (rank None = not eligible)."""
        rec = next(s for s in self.steps if s.name == step)
        rb, ra = self._ranks(rec.before.order), self._ranks(rec.after.order)
        delta = rec.after.scores - rec.before.scores
        moved = np.flatnonzero((rb != ra) | (np.abs(delta) > 1e-12))
        return {
            self.ids[i]: {
                "from": int(rb[i]) if rb[i] >= 0 else None,
                "to": int(ra[i]) if ra[i] >= 0 else None,
                "delta": round(float(delta[i]), 6),
            }
            for i in moved.tolist()
        }

    def for_item(self, item_id: str) -> list[dict[str, Any]]:
        """The steps that moved or re-scored one item, in order."""
        try:
            row = self.ids.index(item_id)
        except ValueError:
            return []
        out = []
        for rec in self.steps:
            rb = np.flatnonzero(rec.before.order == row)
            ra = np.flatnonzero(rec.after.order == row)
            fr = int(rb[0]) if rb.size else None
            to = int(ra[0]) if ra.size else None
            delta = float(rec.after.scores[row] - rec.before.scores[row])
            if fr != to or abs(delta) > 1e-12:
                out.append({"step": rec.name, "from": fr, "to": to, "delta": round(delta, 6)})
        return out

    def to_dict(self, ids: Sequence[str] | None = None) -> dict[str, Any]:
        """Explain payload: per step, its time and the changes (restricted to ``ids``)."""
        keep = set(ids) if ids is not None else None
        steps = []
        for rec in self.steps:
            ch = self.changes(rec.name)
            if keep is not None:
                ch = {k: v for k, v in ch.items() if k in keep}
            steps.append({"step": rec.name, "ms": round(rec.ms, 4), "changed": ch})
        return {"steps": steps}


@dataclass(frozen=True)
class RerankResult:
    order: np.ndarray  # batch rows, best first (ineligible rows dropped)
    scores: np.ndarray  # final score per position of ``order``
    trace: Trace
    batch: CandidateBatch

    @property
    def ids(self) -> list[str]:
        return [self.batch.ids[i] for i in self.order.tolist()]

    def top(self, k: int) -> list[str]:
        return [self.batch.ids[i] for i in self.order[:k].tolist()]


class Reranker:
    """Runs ``config.steps`` over a candidate batch; the scorer defaults to the linear model."""

    def __init__(self, config: RerankConfig | None = None, scorer: Scorer | None = None) -> None:
        self.config = config or RerankConfig()
        self.scorer: Scorer = scorer or LinearScorer(self.config)
        self._steps = [(name, STEPS[name]) for name in self.config.steps]

    def run(
        self,
        cands: CandidateBatch | Sequence[Any],
        features: Features,
        ctx: RerankContext | None = None,
        *,
        timed: bool = False,
    ) -> RerankResult:

        ctx = ctx or RerankContext()
        if not isinstance(cands, CandidateBatch):  # a sequence of queries.Candidate
            cands = CandidateBatch.from_candidates(cands)
        n = len(cands)
        X = assemble_features(cands, features, ctx, self.config)
        inp = RerankInputs(cands, features, ctx, X, self.scorer, ctx.k or self.config.page_size)
        state = RerankState(np.zeros(n), np.arange(n, dtype=np.int64))
        records = []
        for name, fn in self._steps:
            t0 = perf_counter() if timed else 0.0
            new = fn(state, inp, self.config)
            records.append(StepRecord(name, state, new, (perf_counter() - t0) * 1e3))
            state = new
        return RerankResult(
            order=state.order,
            scores=state.scores[state.order],
            trace=Trace(cands.ids, records, X),
            batch=cands,
        )
