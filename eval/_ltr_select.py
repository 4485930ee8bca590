"""Which candidate configuration a learnt ranker is served with, picked on the fitting period.

The learning loop (:func:`~opendisco.eval.learn_ranker`) serves every round once per candidate
configuration (for example the ``itemsim`` source off and on) on the same member state, and
trains one ranker per configuration. ``train_ltr``'s own metric cannot compare them: its NDCG
over a list's candidates is normalised by the positives that *reached* that list, so the
configuration that brings more of a member's positives into the candidate set is penalised for
it. Here every logged list is scored the way the test stage scores the served pipeline:

* :func:`list_ndcg`: NDCG@k of the list's candidates ordered by a model, against **all** the
  member's positives that label that list (the ideal is ``min(k, n)`` hits), with binary gains;
* :func:`member_values`: per member, the sum over their labelled lists divided by the lists
  served to them (a list none of whose positives reached the candidates counts 0);
* the lists scored are the validation round's (ordered by the model fitted on the rolling
  lists only) and every rolling list, ordered by a model with the same parameters and rounds
  fitted on the *other* members' rolling lists (:func:`member_folds`, :func:`crossfit_scores`):
  no list is scored by a model that learnt from it, and the comparison has about
  ``lists_per_user + 1`` lists per member instead of one.

:func:`pick_config` is the rule, declared before any test figure of it was seen: the
configurations are listed simplest first and the simplest is the default; a richer one
replaces the current pick only when its paired per-member gain over it is positive and at
least :data:`MIN_SE` standard errors (``opendisco.eval.paired_values``).
:func:`adoption` applies the same rule to the picked ranker against the linear pipeline (the
lists in the order they were served): on small data the ranker can beat the logged order on
the in-candidate NDCG of its validation lists and still lose per member over all targets.

The same per-member value picks each configuration's LightGBM parameters
(:func:`fit_config`): a validation round alone (one list per member, NDCG over the candidates
that reached it) is too few lists to separate grid points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from opendisco.rerank import (
    LabelPolicy,
    LtrData,
    LtrResult,
    join_outcomes,
    train_lambdamart,
    train_ltr,
)

from ._ab import paired_values

__all__ = [
    "MIN_SE",
    "ConfigFit",
    "adoption",
    "crossfit_scores",
    "fit_config",
    "list_ndcg",
    "list_tag",
    "member_folds",
    "member_values",
    "pick_config",
    "round_targets",
    "subset",
]

#: standard errors of the paired per-member gain a richer configuration needs to be picked
MIN_SE = 1.0


def list_ndcg(
    y: np.ndarray, groups: np.ndarray, scores: np.ndarray, n_targets: Sequence[int], k: int
) -> np.ndarray:
    """Pure: per list, NDCG@k of its rows ordered by ``scores`` (higher first, ties in logged
    order), a row with label > 0 being a hit, ideal = ``min(k, n_targets[list])`` hits."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.concatenate([[0.0], np.cumsum(disc)])
    out = np.zeros(len(groups))
    start = 0
    for g, size in enumerate(groups.tolist()):
        yy, ss = y[start : start + size], scores[start : start + size]
        start += size
        hits = (yy[np.argsort(-ss, kind="stable")][:k] > 0).astype(np.float64)
        positives = int((yy > 0).sum())
        if positives > int(n_targets[g]):
            raise ValueError(f"list {g}: {positives} positive rows, {n_targets[g]} targets")
        n = min(k, int(n_targets[g]))
        out[g] = float(hits @ disc[: len(hits)]) / ideal[n] if n else 0.0
    return out


def member_values(
    values: np.ndarray,
    list_members: Sequence[str],
    served: Mapping[str, int],
    members: Sequence[str],
) -> np.ndarray:
    """Pure: per member of ``members``, the sum of their labelled lists' ``values`` divided by
    the lists served to them (``served``; unlabelled lists count 0; no list served: 0)."""
    total: dict[str, float] = {}
    for v, m in zip(values.tolist(), list_members, strict=True):
        total[m] = total.get(m, 0.0) + v
    return np.array([total.get(m, 0.0) / served[m] if served.get(m) else 0.0 for m in members])


def member_folds(list_members: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Pure: a fold number per list, every list of a member in the same fold (members
    shuffled with ``seed``, then dealt round-robin)."""
    names = sorted(set(list_members))
    order = np.random.default_rng(seed).permutation(len(names))
    fold = {names[j]: pos % folds for pos, j in enumerate(order.tolist())}
    return np.array([fold[m] for m in list_members], dtype=np.int64)


def subset(data: LtrData, keep: np.ndarray) -> LtrData:
    """The lists of ``data`` where ``keep`` (one bool per list) is true, in order."""
    bounds = np.concatenate([[0], np.cumsum(data.groups)])
    rows = np.concatenate(
        [np.arange(bounds[g], bounds[g + 1]) for g in np.flatnonzero(keep)] or [np.zeros(0, int)]
    ).astype(np.int64)
    idx = np.flatnonzero(keep).tolist()
    return LtrData(
        data.X[rows],
        data.y[rows],
        data.groups[keep],
        [data.at[g] for g in idx],
        [data.list_ids[g] for g in idx],
        data.logged_rank[rows],
    )


def crossfit_scores(
    data: LtrData,
    list_members: Sequence[str],
    params: Mapping[str, Any],
    rounds: int,
    *,
    folds: int = 5,
    k: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Per row of ``data``: the score of a model with ``params`` and ``rounds`` fitted on the
    lists of the members outside the row's fold (:func:`member_folds`)."""
    fold = member_folds(list_members, folds, seed)
    bounds = np.concatenate([[0], np.cumsum(data.groups)])
    scores = np.zeros(len(data.y))
    for f in range(folds):
        inside = fold == f
        if not inside.any() or inside.all():
            continue
        fit = subset(data, ~inside)
        model = train_lambdamart(
            fit.X, fit.y, fit.groups, rounds=rounds, eval_at=k, params=params, seed=seed
        )
        for g in np.flatnonzero(inside).tolist():
            lo, hi = int(bounds[g]), int(bounds[g + 1])
            scores[lo:hi] = model.score(data.X[lo:hi])
    return scores


def pick_config(
    values: Sequence[np.ndarray], names: Sequence[Any], min_se: float = MIN_SE
) -> tuple[int, list[dict[str, Any]]]:
    """Pure: the index of the configuration picked (module doc) and every comparison made
    (each richer configuration against the pick so far: means, paired gain, SE, z)."""
    if not values:
        raise ValueError("no configuration to pick from")
    pick, steps = 0, []
    for i in range(1, len(values)):
        d = paired_values(values[pick], values[i], "member validation ndcg")
        z = d.diff / d.se if d.se > 0 else (float("inf") if d.diff > 0 else 0.0)
        won = d.diff > 0 and z >= min_se
        steps.append(
            {
                "richer": names[i],
                "against": names[pick],
                "mean": round(d.b, 5),
                "against_mean": round(d.a, 5),
                "gain": round(d.diff, 5),
                "se": round(d.se, 5),
                "z": round(z, 2) if np.isfinite(z) else z,
                "members": d.n,
                "picked": won,
            }
        )
        if won:
            pick = i
    return pick, steps


def adoption(
    linear: np.ndarray, ranker: np.ndarray, name: str, min_se: float = MIN_SE
) -> dict[str, Any]:
    """Pure: whether a learnt ranker is adopted over the linear pipeline — :func:`pick_config`'s
    rule with the linear pipeline as the simplest configuration: per member, ``linear`` is the
    value of the lists in the order they were served (:meth:`ConfigFit.logged_values` of the
    pipeline's own configuration), ``ranker`` the picked ranker's (:meth:`ConfigFit.values`)."""
    pick, (step,) = pick_config([linear, ranker], ["linear", name], min_se)
    return {"adopted": pick == 1, "min_se": min_se, **step}


def list_tag(request_id: Any) -> tuple[int, int]:
    """Pure: (configuration, round) of a loop's request id ``c<i>.r<j>.<hex>``."""
    parts = str(request_id).split(".")
    if len(parts) < 3 or parts[0][:1] != "c" or parts[1][:1] != "r":
        raise ValueError(f"request id {request_id!r} is not the learning loop's c<i>.r<j>.<hex>")
    return int(parts[0][1:]), int(parts[1][1:])


def round_targets(
    rounds: Sequence[tuple[Sequence[str], Sequence[tuple[str, str]]]],
) -> dict[tuple[str, int], int]:
    """Pure: per (member, round) served, the likes that label that list — the member's likes
    of this and every later round but the last (the rolling rounds: their lists are labelled
    by likes before the validation round), or, in the last round, that round's own likes.
    ``rounds``: (members served, likes posted after) per round, in order."""
    out: dict[tuple[str, int], int] = {}
    last = len(rounds) - 1
    if last < 0:
        return out
    own: dict[str, int] = {}
    for u, _ in rounds[last][1]:
        own[u] = own.get(u, 0) + 1
    for u in rounds[last][0]:
        out[(u, last)] = own.get(u, 0)
    later: dict[str, int] = {}
    for j in range(last - 1, -1, -1):
        for u, _ in rounds[j][1]:
            later[u] = later.get(u, 0) + 1
        for u in rounds[j][0]:
            out[(u, j)] = later.get(u, 0)
    return out


@dataclass
class ConfigFit:
    """One configuration's ranker and the per-list figures the comparison reads."""

    result: LtrResult
    train: LtrData
    valid: LtrData
    served: dict[str, int]  # lists served per member (every round)
    ndcg: np.ndarray  # per labelled list (rolling cross-fitted, then validation)
    list_members: list[str]
    summary: dict[str, Any]
    logged: np.ndarray  # per labelled list, as ``ndcg``: the logged (served) order's

    def values(self, members: Sequence[str]) -> np.ndarray:
        """Per member: :func:`member_values` over every list served to them."""
        return member_values(self.ndcg, self.list_members, self.served, members)

    def logged_values(self, members: Sequence[str]) -> np.ndarray:
        """Per member, as :meth:`values`: the lists in the order they were served (the
        pipeline's own ranking, the comparison an adopted ranker has to win)."""
        return member_values(self.logged, self.list_members, self.served, members)


def fit_config(
    lists: Sequence[Mapping[str, Any]],
    before: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    valid_from: datetime,
    targets: Mapping[tuple[str, int], int],
    *,
    policy: LabelPolicy,
    k: int,
    grid: Sequence[Mapping[str, Any]],
    seed: int = 0,
    folds: int = 5,
) -> ConfigFit:
    """One configuration's logged lists (decoded, request ids per :func:`list_tag`): the
    rolling lists (served before ``valid_from``, labelled by ``before``) train, the
    validation round's validate (``train_ltr``: early stopping picks the rounds); every list
    is scored (module doc) for each ``grid`` point, and the point with the highest mean
    per-member value wins (the first on ties: list the simplest first)."""
    train = join_outcomes([d for d in lists if d["at"] < valid_from], before, policy)
    valid = join_outcomes([d for d in lists if d["at"] >= valid_from], events, policy)
    meta = {str(d["_id"]): (str(d["user_id"]), list_tag(d["_id"])[1]) for d in lists}
    served: dict[str, int] = {}
    for user, _ in meta.values():
        served[user] = served.get(user, 0) + 1
    members = sorted(served)
    in_valid = sorted({str(d["user_id"]) for d in lists if d["at"] >= valid_from})

    def scored(data: LtrData, scores: np.ndarray) -> tuple[np.ndarray, list[str]]:
        who = [meta[i] for i in data.list_ids]
        n = [targets.get(w, 0) for w in who]
        return list_ndcg(data.y, data.groups, scores, n, k), [u for u, _ in who]

    best: tuple[float, LtrResult, np.ndarray, np.ndarray] | None = None
    tried = []
    for over in grid or [{}]:
        result = train_ltr(train, valid=valid, policy=policy, k=k, grid=[over], seed=seed)
        chosen = {key: v for key, v in result.report["params"].items() if key != "seed"}
        assert result.valid_scorer is not None
        v_ndcg, v_who = scored(valid, result.valid_scorer.score(valid.X))
        r_users = [meta[i][0] for i in train.list_ids]
        r_scores = crossfit_scores(
            train, r_users, chosen, result.report["best_iteration"], folds=folds, k=k, seed=seed
        )
        r_ndcg, r_who = scored(train, r_scores)
        ndcg, who = np.concatenate([r_ndcg, v_ndcg]), [*r_who, *v_who]
        value = float(member_values(ndcg, who, served, members).mean())
        tried.append(
            {
                "params": dict(over),
                "best_iteration": result.report["best_iteration"],
                f"valid_ndcg@{k}": result.report["metrics"][f"valid_ndcg@{k}"],
                "member_value": round(value, 5),
            }
        )
        if best is None or value > best[0]:
            best = (value, result, r_ndcg, v_ndcg)
    assert best is not None
    _, result, r_ndcg, v_ndcg = best
    result.report["grid"] = tried
    who = [meta[i][0] for i in (*train.list_ids, *valid.list_ids)]
    logged = np.concatenate(
        [scored(d, -d.logged_rank.astype(np.float64))[0] for d in (train, valid)]
    )
    last = max((j for _, j in meta.values()), default=0)
    wanted = sum(targets.get((u, last), 0) for u in in_valid)
    rolling_served = sum(served.values()) - len(in_valid)
    summary = {
        "train_lists": len(train.groups),
        "valid_lists": len(valid.groups),
        f"valid_ndcg@{k}": result.report["metrics"][f"valid_ndcg@{k}"],
        # every validation-round member, 0 when none of their positives reached the candidates
        "valid_round_ndcg": round(float(v_ndcg.sum()) / max(1, len(in_valid)), 5),
        "rolling_ndcg": round(float(r_ndcg.sum()) / max(1, rolling_served), 5),
        "valid_candidate_recall": round(int((valid.y > 0).sum()) / wanted, 4) if wanted else None,
        "params": {key: v for key, v in result.report["params"].items() if key != "seed"},
        "best_iteration": result.report["best_iteration"],
        "grid": tried,
    }
    summary["logged_value"] = round(float(member_values(logged, who, served, members).mean()), 5)
    return ConfigFit(
        result, train, valid, served, np.concatenate([r_ndcg, v_ndcg]), who, summary, logged
    )
