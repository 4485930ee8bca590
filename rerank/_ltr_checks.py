"""What a learnt ranker's validation lists say about its features (cheap diagnostics).

:func:`single_feature_ndcg`: the validation NDCG@k of ordering every list by one column alone
(no model): which raw signals carry the ranking, on the lists the model is judged on.
:func:`ablation_ndcg`: the validation NDCG@k of the chosen parameters refitted with a group of
columns held constant, one group at a time (what each lever adds). Both read only training
and validation lists: nothing here sees a test period.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ._ltr import LtrData, _fit, ndcg_at
from ._types import FEATURE_NAMES

__all__ = ["ablation_ndcg", "single_feature_ndcg"]

_COL = {n: j for j, n in enumerate(FEATURE_NAMES)}


def single_feature_ndcg(valid: LtrData, k: int = 10) -> dict[str, float]:
    """Pure: NDCG@k of each column used alone as the score (higher first), best first;
    constant columns are left out."""
    out = {}
    for name, j in _COL.items():
        col = valid.X[:, j]
        if np.nanmax(col) == np.nanmin(col):
            continue
        out[name] = round(ndcg_at(valid.y, valid.groups, np.nan_to_num(col, nan=-1e9), k), 5)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _without(data: LtrData, columns: Sequence[str]) -> LtrData:
    X = data.X.copy()
    X[:, [_COL[c] for c in columns]] = 0.0
    return replace(data, X=X)


def ablation_ndcg(
    train: LtrData,
    valid: LtrData,
    params: Mapping[str, Any],
    groups: Mapping[str, Sequence[str]],
    *,
    k: int = 10,
    max_rounds: int = 1000,
    early_stopping: int = 50,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per named group: the validation NDCG@k (and best round) of ``params`` fitted with the
    group's columns held at 0 in training and validation lists."""
    out = {}
    for name, columns in groups.items():
        tr, va = _without(train, columns), _without(valid, columns)
        _, best, ndcg = _fit(
            tr, va, params, max_rounds=max_rounds, early_stopping=early_stopping, k=k, seed=seed
        )
        out[name] = {f"valid_ndcg@{k}": round(ndcg, 5), "best_iteration": best}
    return out
