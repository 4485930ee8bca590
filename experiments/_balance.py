"""Market balance from the pre-period, and the two-sided design it calls for.

Johari, Li, Liskovich & Weintraub (2022, "Experimental design in two-sided platforms: an
analysis of bias") show that which side to randomise depends on market balance: when the
market is demand-constrained, customer (viewer) randomisation is unbiased and listing
(candidate) randomisation is not; when it is supply-constrained, the reverse. Their two-sided
design TSR(a_C, a_L) randomises viewers with share a_C and candidates with share a_L (the
treatment applies to treated × treated pairs) and tends to the unbiased one-sided design at
either end: a_L → 1 in a demand-constrained market (every candidate treated: the viewer
contrast is the viewer-randomised experiment), a_C → 1 in a supply-constrained one. The
interpolating estimator weighs the viewer-side contrast by β, the same balance index (β → 1
demand-constrained, → 0 supply-constrained).

Here supply is the members' reply capacity (likes reviewed per active day) and demand the
likes they receive. The balance index is measured on the **pre-period**, never on the
experiment's outcomes: the share of likes sent to members whose capacity bound — a member
who was active while a like to them went unreviewed and expired
(:func:`market_balance`). 0: no like ever waits for capacity (demand-constrained); 1: every
like goes to a saturated member (supply-constrained). The plan (:func:`two_sided_plan`) then
interpolates linearly between the two limits, as Johari et al. do, with each share capped
below 1 (``cap``) so that every cell keeps units and the SRM check keeps both arms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TwoSidedPlan", "market_balance", "two_sided_plan"]


@dataclass(frozen=True)
class TwoSidedPlan:
    """Pre-registered two-sided allocation: viewer share a_C, candidate share a_L, TSRI β."""

    balance: float
    viewer_share: float
    candidate_share: float
    beta: float

    def design(self) -> dict[str, float | str]:
        """The design fields of an experiment file (``design: {...}``)."""
        return {
            "kind": "two_sided",
            "viewer_share": self.viewer_share,
            "candidate_share": self.candidate_share,
            "tsri_beta": self.beta,
        }


def market_balance(receiver: np.ndarray, capacity_bound: np.ndarray) -> float:
    """Share of the likes (one row each: the member who received it) that went to members
    with at least one like left unreviewed for lack of capacity (``capacity_bound``: this
    like expired although its receiver was active while it waited)."""
    receiver = np.asarray(receiver)
    if receiver.size == 0:
        return 0.0
    bound = np.unique(receiver[np.asarray(capacity_bound, dtype=bool)])
    return float(np.isin(receiver, bound).mean())


def two_sided_plan(balance: float, base: float = 0.5, cap: float = 0.9) -> TwoSidedPlan:
    """The allocation for a market of this ``balance`` (see the module docstring):
    a_C = base + (cap − base)·balance, a_L = base + (cap − base)·(1 − balance),
    β = 1 − balance."""
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"balance must be in [0, 1], got {balance}")
    if not 0.0 < base <= cap < 1.0:
        raise ValueError("need 0 < base <= cap < 1")
    span = cap - base
    return TwoSidedPlan(
        balance=float(balance),
        viewer_share=round(base + span * balance, 4),
        candidate_share=round(base + span * (1.0 - balance), 4),
        beta=round(1.0 - balance, 4),
    )
