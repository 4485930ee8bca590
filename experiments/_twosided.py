"""The two-sided interpolating estimator (TSRI) and its two-way bootstrap standard error.

The four cells (viewer arm × candidate arm) of a two-sided experiment give
TSRI(β) = β·(r₁₁ − r₀₁) + (1 − β)·(r₁₁ − r₁₀) (Johari, Li, Liskovich & Weintraub 2022), r the
outcome per impression of a cell: a viewer-side contrast (unbiased when the market is
demand-constrained) and a candidate-side one (supply-constrained) weighted by the market's
balance β (pre-registered from the pre-period: :mod:`._balance`). Their TSRI-k adds
k·β(1 − β)·[(r₀₁ − r₀₀) + (r₁₀ − r₀₀)]: the cross cells' spillovers, which competition makes
negative in their model (treated pairs take what the control cells would have had), so the
term removes the part of the TSR contrasts that competition inflates; k = 0 is TSRI(β).
The standard error comes from a two-way bootstrap: Poisson resampling of viewers and,
separately, of candidates; their variances add, less the pair-level variance both count
(the bootstrap form of two-way clustering, Cameron, Gelbach & Miller 2011; that last term
by linearisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from ._analysis import Estimate

__all__ = ["tsri", "tsri_family"]


def _cells(cell: np.ndarray, num: np.ndarray, den: np.ndarray, keys: np.ndarray, n: int):
    """Per key, the 8 sums (num, den of cells 00, 01, 10, 11)."""
    k = keys.astype(np.int64) * 4 + cell
    out = np.empty((n, 8))
    out[:, 0::2] = np.bincount(k, weights=num, minlength=4 * n).reshape(n, 4)
    out[:, 1::2] = np.bincount(k, weights=den, minlength=4 * n).reshape(n, 4)
    return out


#: P(X ≤ k) of Poisson(1), k = 0..19 (the last step is 1 - 1e-19: float-exact)
_POISSON1_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1)) for k in range(20)])


def _poisson1(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Poisson(1) bootstrap weights by inverting the CDF (several times faster than
    ``rng.poisson`` for the two-way bootstrap's ``draws × units`` matrix)."""
    return np.searchsorted(_POISSON1_CDF, rng.random(shape)).astype(np.float64)


def _tsri_value(S: np.ndarray, beta: float, k: float = 0.0) -> np.ndarray:
    """TSRI-k(β) from cell sums (..., 8): β(r11 − r01) + (1 − β)(r11 − r10)
    + kβ(1 − β)(r01 + r10 − 2·r00)."""
    # an empty cell (no treated viewer: r = NaN) is a NaN estimate, not a RuntimeWarning
    with np.errstate(divide="ignore", invalid="ignore"):
        r = S[..., 0::2] / S[..., 1::2]  # r00, r01, r10, r11
        spill = r[..., 1] + r[..., 2] - 2 * r[..., 0]
        return (
            beta * (r[..., 3] - r[..., 1])
            + (1 - beta) * (r[..., 3] - r[..., 2])
            + k * beta * (1 - beta) * spill
        )


def tsri(*rows: np.ndarray, k: float = 0.0, **options: Any) -> Estimate:
    """The two-sided interpolating estimator TSRI-k(β) and its two-way bootstrap standard
    error: :func:`tsri_family` for one k (``rows``: viewer, candidate, viewer arm,
    candidate arm, numerator, denominator per impression row)."""
    return tsri_family(*rows, ks=(k,), **options)[0]


def tsri_family(
    viewer: np.ndarray,
    candidate: np.ndarray,
    viewer_arm: np.ndarray,
    candidate_arm: np.ndarray,
    num: np.ndarray,
    den: np.ndarray,
    *,
    beta: float = 0.5,
    ks: Sequence[float] = (0.0,),
    scale: float = 1.0,
    bootstrap: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[Estimate]:
    """TSRI-k(β) for each k of ``ks``, all on the same bootstrap draws: the viewers' and
    the candidates' Poisson(1) resamplings, their variances added less the pair term."""
    cell = 2 * viewer_arm.astype(np.int64) + candidate_arm.astype(np.int64)
    vu, vi = np.unique(viewer, return_inverse=True)
    cu, ci = np.unique(candidate, return_inverse=True)
    A = _cells(cell, num, den, vi, vu.shape[0])
    C = _cells(cell, num, den, ci, cu.shape[0])
    S = A.sum(axis=0)
    rng = np.random.default_rng(seed)
    draws_v = _poisson1(rng, (bootstrap, A.shape[0])) @ A
    draws_c = _poisson1(rng, (bootstrap, C.shape[0])) @ C
    # the pair-level term both resamplings count: Σ over pairs of (∇f · pair sums)²
    pair = viewer.astype(np.int64) * (int(candidate.max()) + 1) + candidate
    pu, pi = np.unique(pair, return_inverse=True)
    P = _cells(cell, num, den, pi, pu.shape[0])
    z = float(ndtri(1 - alpha / 2))
    r = S[0::2] / np.where(S[1::2] > 0, S[1::2], np.nan)
    arm_of = np.zeros(vu.shape[0], dtype=np.int64)
    arm_of[vi] = viewer_arm
    units = (int((arm_of == 0).sum()), int((arm_of == 1).sum()))
    cells = {f"r{c}": float(r[i]) * scale for i, c in enumerate(("00", "01", "10", "11"))}
    out = []
    for k in ks:
        est = float(_tsri_value(S, beta, k))
        var_v = float(np.var(_tsri_value(draws_v, beta, k)))
        var_c = float(np.var(_tsri_value(draws_c, beta, k)))
        var_p = float(((P @ _gradient(S, beta, k)) ** 2).sum())
        var = var_v + var_c - var_p
        if not var > 0:
            var = max(var_v, var_c)
        se = float(np.sqrt(var))
        out.append(
            Estimate(
                f"tsri(beta={beta:g}, k={k:g})" if k else f"tsri(beta={beta:g})",
                est * scale,
                se * scale,
                (est - z * se) * scale,
                (est + z * se) * scale,
                float(2 * ndtr(-abs(est) / se)) if se > 0 else float("nan"),
                float(r[0]) * scale,
                float(r[3]) * scale,
                units,
                None,
                dict(cells),
            )
        )
    return out


def _gradient(S: np.ndarray, beta: float, k: float = 0.0, eps: float = 1e-7) -> np.ndarray:
    """∇ of TSRI w.r.t. the 8 cell sums (central differences, relative step)."""
    g = np.zeros(8)
    for j in range(8):
        h = eps * max(abs(S[j]), 1.0)
        up, dn = S.copy(), S.copy()
        up[j] += h
        dn[j] -= h
        g[j] = (_tsri_value(up, beta, k) - _tsri_value(dn, beta, k)) / (2 * h)
    return g
