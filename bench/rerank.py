"""Rerank budget: 500 candidates through every step in-process (target p99 ≤ 5 ms).

Compares against the bare library work on the same input (one ``X @ w`` + ``argsort``), so the
ratio shows what the named steps, MMR and the trace cost on top. Writes
bench/results/rerank.json.

    python bench/rerank.py            # 500 candidates, 300 runs
    python bench/rerank.py --full     # 500 and 2,000 candidates, 2,000 runs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from opendisco.rerank import (
    CandidateBatch,
    Features,
    RerankConfig,
    RerankContext,
    Reranker,
    assemble_features,
)


def make_input(n: int, seed: int = 0) -> tuple[CandidateBatch, Features, RerankContext]:
    rng = np.random.default_rng(seed)
    items = [
        {
            "id": f"i{i}",
            "category": f"c{rng.integers(20)}",
            "owner_id": f"o{rng.integers(100)}",
            "quality": float(rng.random()),
            "popularity": float(rng.random() * 1000),
            "created_at": "2026-01-01T00:00:00Z",
        }
        for i in range(n)
    ]
    sources = [{"knn": float(rng.random()), "bm25": float(rng.random() * 5)} for _ in range(n)]
    batch = CandidateBatch.from_items(items, fused=rng.random(n), sources=sources)
    V = rng.normal(size=(n, 384))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    B = rng.normal(size=(n, 32))
    B /= np.linalg.norm(B, axis=1, keepdims=True)
    feats = Features(
        V,
        B,
        rng.poisson(20, n).astype(float),
        rng.poisson(5, n).astype(float),
        rng.exponential(1, n),
    )
    ctx = RerankContext(
        user_vector=rng.normal(size=384),
        behaviour_vector=rng.normal(size=32),
        fatigue={"c1": 3, "c2": 1},
        bans=frozenset(f"i{i}" for i in range(0, n, 50)),
        pins={"i7": 0, "i9": 3},
    )
    return batch, feats, ctx


def _time(fn, runs: int) -> dict[str, float]:
    for _ in range(20):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    a = np.array(ts)
    return {"median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99))}


def run(n: int, runs: int) -> dict[str, object]:
    batch, feats, ctx = make_input(n)
    cfg = RerankConfig()
    rr = Reranker(cfg)
    w = cfg.weight_vector()

    def bare() -> None:
        X = assemble_features(batch, feats, ctx, cfg)
        np.argsort(-(X @ w))

    full = _time(lambda: rr.run(batch, feats, ctx), runs)
    base = _time(bare, runs)
    res = rr.run(batch, feats, ctx, timed=True)
    per_step = {s.name: round(s.ms, 4) for s in res.trace.steps}
    return {
        "candidates": n,
        "runs": runs,
        "reranker": full,
        "bare_score_sort": base,
        "ratio_median": full["median_ms"] / base["median_ms"],
        "step_ms_one_run": per_step,
        "budget_p99_ms": 5.0,
        "within_budget": full["p99_ms"] <= 5.0 if n == 500 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    sizes, runs = ([500, 2000], 2000) if args.full else ([500], 300)
    out = {"results": [run(n, runs) for n in sizes]}
    for r in out["results"]:
        print(
            f"{r['candidates']:5d} candidates: rerank median {r['reranker']['median_ms']:.3f} ms"
            f" p99 {r['reranker']['p99_ms']:.3f} ms | bare score+sort median "
            f"{r['bare_score_sort']['median_ms']:.3f} ms (x{r['ratio_median']:.1f})"
        )
    path = Path(__file__).parent / "results" / "rerank.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
