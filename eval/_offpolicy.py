"""Off-policy evaluation of a ranking model from explored served lists: IPS, SNIPS, DR.

**Data.** Explored lists of the served-list log (``signals.ServedLog``; ``serving`` draws an
explored page by Plackett–Luce sampling over the reranked pool, see ``rerank.pl_sample``):
the pool rows and their weights, the shown rows, and one reward per shown slot (from the
later outcomes, :class:`~opendisco.rerank.LabelPolicy`: reward = 1 when the gain is > 0).
Explored requests are a random share of all requests, independent of the member, so a value
estimated on them is the value over all requests. The rows a failed source's short page was
filled with (``filled``) stay, with their own outcomes: the page was drawn from a pool holding
them, by the logged weights (training leaves them out; here they are part of what the
logging and the target policies rank).

**Target.** The candidate model scores the list's logged feature rows and shows its top ``k``
in score order (a deterministic policy; the served steps after scoring — caps, MMR — are not
replayed).

**Value.** ``V = E[sum_j alpha_j r_j]`` over the first ``k`` slots: positive outcomes per list
(``alpha_j = 1``) or their DCG (``alpha_j = 1 / log2(j + 2)``).

**Estimators** (the item-position / "independent" slate estimators of Open Bandit Pipeline,
``SlateIndependentIPS`` and its self-normalised and doubly-robust forms, written here for a
deterministic target): assuming a slot's reward depends on the item and the slot only,
``w_ij = 1{logged item at j == target item at j} / pi0(target item at j)`` where ``pi0`` is
the Plackett–Luce marginal of the logging policy (:func:`~opendisco.rerank.pl_marginals`).

* IPS: ``mean_i sum_j alpha_j w_ij r_ij``;
* SNIPS: per slot ``sum_i w_ij r_ij / sum_i w_ij`` (weights' mean is 1 in expectation);
* DR: ``mean_i sum_j alpha_j [q(x_i, t_ij, j) + w_ij (r_ij - q(x_i, a_ij, j))]`` with a reward
  model ``q`` (LightGBM on feature row + slot), cross-fitted over two folds of lists so a list
  is never scored by a model that saw it.

Confidence intervals are normal 95% intervals from the per-list influence terms (the lists are
independent): plain standard errors for IPS and DR, the delta method for SNIPS. A target slot
whose item the logging pool could not show has ``pi0 = 0`` (no support): IPS/SNIPS count it as
0 and report the unsupported share; DR counts its model estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opendisco._exceptions import InvalidInput
from opendisco.rerank import LabelPolicy, align_features, join_outcomes, pl_marginals

__all__ = ["OffPolicyResult", "SlateLogs", "estimate", "slate_logs"]

Z95 = 1.959963984540054


@dataclass
class SlateLogs:
    """Explored lists as arrays: ``n`` lists, ``k`` slots, pool rows per list (ragged)."""

    X: list[np.ndarray]  # per list: (rows, F) feature matrix in FEATURE_NAMES order
    shown: np.ndarray  # (n, k) logged row per slot
    reward: np.ndarray  # (n, k) reward per slot
    marginals: list[np.ndarray]  # per list: (rows, k) logging probability of row at slot
    list_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.shown.shape[0])


def slate_logs(
    lists: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    policy: LabelPolicy | None = None,
    *,
    k: int | None = None,
    samples: int = 4000,
    seed: int = 0,
) -> SlateLogs:
    """Explored lists joined with their outcomes (rewards on shown slots only)."""
    policy = LabelPolicy(**{**(policy or LabelPolicy()).model_dump(), "scope": "shown"})
    rng = np.random.default_rng(seed)
    explored = [d for d in lists if d.get("explored") and d.get("pool") and d.get("user_id")]
    if k is None:
        k = min((len(d["shown"]) for d in explored), default=0)
    keep = [d for d in explored if len(d["shown"]) >= k and len(d["ids"]) == d["X"].shape[0]]
    labels = _labels(keep, events, policy)
    Xs, margs, shown, reward, ids = [], [], [], [], []
    cache: dict[tuple[float, ...], np.ndarray] = {}  # pools of one size share their weights
    for d in keep:
        rows = len(d["ids"])
        pool = np.asarray(d["pool"], dtype=np.int64)
        key = tuple(float(x) for x in d["pool_w"])
        if key not in cache:
            cache[key] = pl_marginals(np.asarray(key), k, samples=samples, rng=rng)
        pm = cache[key]
        m = np.zeros((rows, k))
        m[pool, : pm.shape[1]] = pm
        y = labels.get(str(d["_id"]), np.zeros(rows))
        s = np.asarray(d["shown"][:k], dtype=np.int64)
        Xs.append(align_features(d["X"], d.get("features") or []))
        margs.append(m)
        shown.append(s)
        reward.append((y[s] > 0).astype(np.float64))
        ids.append(str(d["_id"]))
    return SlateLogs(
        Xs,
        # reshape(-1, 0) of no list at all (k 0: nothing explored) is a ValueError
        np.asarray(shown, dtype=np.int64).reshape(len(keep), k),
        np.asarray(reward, dtype=np.float64).reshape(len(keep), k),
        margs,
        ids,
    )


def _labels(
    lists: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]], policy: LabelPolicy
) -> dict[str, np.ndarray]:
    """Per list, the label of every logged row. The filled rows of a short page too: the
    training join leaves them out (no source proposed them), but an explored page drew them
    from its pool with the logged weights like any other row, and the target ranks them as
    the served pipeline does; without them the labels lost their rows (a row after a filled
    one got its neighbour's outcome)."""
    out = {}
    for d in lists:  # one list at a time: join_outcomes drops lists without a positive
        data = join_outcomes([{**d, "filled": []}], events, policy)
        if len(data.groups):
            out[str(d["_id"])] = data.y.astype(np.float64)
    return out


@dataclass
class OffPolicyResult:
    estimates: dict[str, dict[str, float]]  # estimator -> value, se, ci_low, ci_high
    lists: int
    k: int
    unsupported: float  # share of target slots the logging pool could not show
    logged_value: float  # the logging policy's own value (on-policy mean)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lists": self.lists,
            "k": self.k,
            "unsupported_slots": round(self.unsupported, 4),
            "logged_value": round(self.logged_value, 6),
            "estimates": self.estimates,
        }


def _ci(value: float, terms: np.ndarray) -> dict[str, float]:
    se = float(terms.std(ddof=1) / np.sqrt(len(terms)))  # estimate() needs 2 lists or more
    return {"value": value, "se": se, "ci_low": value - Z95 * se, "ci_high": value + Z95 * se}


#: ``q(logs, logged rows, target rows) -> (q of logged (n, k), q of target (n, k))``
RewardModel = Callable[[SlateLogs, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def estimate(
    logs: SlateLogs,
    target: Callable[[np.ndarray], np.ndarray],
    *,
    weights: str = "uniform",
    reward_model: RewardModel | None = None,
) -> OffPolicyResult:
    """IPS, SNIPS and DR estimates of ``target`` (a scorer: feature rows -> scores)."""
    n, k = logs.shown.shape
    if n < 2 or k == 0:  # one list has no standard error: its intervals were NaN
        raise InvalidInput(
            f"{n} explored list(s) with outcomes: at least 2 are needed to estimate from"
        )
    alpha = 1.0 / np.log2(np.arange(k) + 2.0) if weights == "dcg" else np.ones(k)
    tgt = np.zeros((n, k), dtype=np.int64)
    pi0 = np.zeros((n, k))
    for i, X in enumerate(logs.X):
        order = np.argsort(-np.asarray(target(X)), kind="stable")[:k]
        tgt[i, : len(order)] = order
        pi0[i] = logs.marginals[i][tgt[i], np.arange(k)]
    match = (logs.shown == tgt) & (pi0 > 0)
    w = np.where(match, 1.0 / np.where(pi0 > 0, pi0, 1.0), 0.0)
    wr = w * logs.reward
    ips_terms = wr @ alpha
    est = {"ips": _ci(float(ips_terms.mean()), ips_terms)}
    A, B = wr.mean(axis=0), w.mean(axis=0)
    ratio = np.where(B > 0, A / np.where(B > 0, B, 1.0), 0.0)
    sn_terms = ((wr - ratio * w) / np.where(B > 0, B, 1.0)) @ alpha
    est["snips"] = _ci(float(ratio @ alpha), sn_terms + float(ratio @ alpha))
    q = reward_model or cross_fitted_reward_model
    q_logged, q_target = q(logs, logs.shown, tgt)
    dr_terms = (q_target + w * (logs.reward - q_logged)) @ alpha
    est["dr"] = _ci(float(dr_terms.mean()), dr_terms)
    for e in est.values():
        for key in e:
            e[key] = round(e[key], 6)
    return OffPolicyResult(
        est,
        n,
        k,
        float((pi0 <= 0).mean()),
        float((logs.reward @ alpha).mean()),
    )


def _slot_rows(logs: SlateLogs, rows: np.ndarray, lists: np.ndarray) -> np.ndarray:
    k = rows.shape[1]
    return np.concatenate(
        [np.column_stack([logs.X[i][rows[i]], np.arange(k)]) for i in lists.tolist()]
    )


def cross_fitted_reward_model(
    logs: SlateLogs, logged: np.ndarray, target: np.ndarray, folds: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``q`` of the logged and of the target (row, slot) pairs: a LightGBM classifier on the
    feature row + slot index, fitted on the other folds' shown slots (cross-fitting)."""
    import lightgbm as lgb

    n, k = logged.shape
    fold = np.random.default_rng(seed).permutation(n) % folds
    q_log, q_tgt = np.zeros((n, k)), np.zeros((n, k))
    for f in range(folds):
        fit, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        y = logs.reward[fit].ravel()
        if len(held) == 0:
            continue
        if len(fit) == 0 or y.min() == y.max():
            q_log[held] = q_tgt[held] = float(y.mean()) if len(y) else 0.0
            continue
        clf = lgb.LGBMClassifier(
            n_estimators=100,
            learning_rate=0.05,
            num_leaves=15,
            min_child_samples=20,
            verbosity=-1,
            n_jobs=1,
            random_state=seed,
        )
        clf.fit(_slot_rows(logs, logged, fit), y)
        q_log[held] = clf.predict_proba(_slot_rows(logs, logged, held))[:, 1].reshape(-1, k)
        q_tgt[held] = clf.predict_proba(_slot_rows(logs, target, held))[:, 1].reshape(-1, k)
    return q_log, q_tgt
