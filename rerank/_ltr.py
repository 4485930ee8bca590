"""Learning to rank from the served-list log: outcome join, time split, LambdaMART, report.

**Join.** Every logged list (``signals.ServedLog``: who, when, the candidates' feature rows)
meets the member's later events: a logged candidate's label is the largest
:class:`LabelPolicy` gain among the member's events on that item within ``window_hours`` after
the list was served (an event of the member's that names the list's ``request_id`` always
counts; another member's never: a client's ``X-Request-ID`` may repeat one). By default
every logged candidate can be labelled (``scope="candidates"``: the member may reach an item
from another list or surface; what matters is that the ranker saw it here); ``scope="shown"``
labels only what the list showed. ``pass``/``skip``/``hide`` are explicit zeros. Lists without
any positive label (no pair to learn from), with fewer than two rows, or logged without
features (the API's fallback answers: no ranker scored them) are dropped; so are the rows a
failed source's short page was filled with from the fallback's lists (``filled``: no source
proposed them, their outcomes are not those of the served candidates), counted in
``skipped["filled_rows"]``. An event of a labelling type without a time, member or item (stored
by other code) labels nothing, counted in ``skipped["unusable_events"]``.

**Training.** The validation lists are later than every training list (time-based: the
model is judged on lists served after the ones it learnt from): given explicitly, or the last
``valid_share`` of the lists in serving order, the training lists then labelled only by the
events before the first validation list (``split_outcomes``: a validation outcome never
trains). LightGBM lambdarank grouped by request stops early on validation NDCG@k; with a
``grid`` of parameter overrides each is fitted that way and the best on validation wins. The
winner is refitted on every list (training and validation, with all their outcomes) for its
best number of rounds. The report holds the feature schema, the label
policy, the data window and counts, every grid point's validation NDCG@k, and the validation
NDCG@k of the model and of the logged order (what was shown first, then the other
candidates in candidate order).

Why this module is long: the join, the time split and the training are one procedure whose
invariants (the lists' order, the validation cut, which outcomes may label which lists) are
read and reviewed together.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from opendisco._backend import backend_errors
from opendisco._versions import write_new, write_next_version
from opendisco.signals import EVENTS, ServedLog

from ._labels import LabelPolicy
from ._learned import LTR_PARAMS, LearnedScorer, align_features, train_lambdamart
from ._types import FEATURE_NAMES

__all__ = [
    "LabelPolicy",
    "LtrData",
    "LtrResult",
    "concat_data",
    "join_outcomes",
    "load_ltr_inputs",
    "ndcg_at",
    "save_model",
    "split_outcomes",
    "train_ltr",
]


@dataclass
class LtrData:
    """Rows grouped by list, lists in serving order."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray  # rows per list
    at: list[datetime]  # serving time per list
    list_ids: list[str]
    logged_rank: np.ndarray  # per row: its position in the logged order (shown first)
    skipped: dict[str, int] = field(default_factory=dict)

    def part(self, lists: slice) -> LtrData:
        bounds = np.concatenate([[0], np.cumsum(self.groups)])
        lo, hi = int(bounds[lists.start or 0]), int(bounds[lists.stop or len(self.groups)])
        return LtrData(
            self.X[lo:hi],
            self.y[lo:hi],
            self.groups[lists],
            self.at[lists],
            self.list_ids[lists],
            self.logged_rank[lo:hi],
        )


def _labelled(ev: Mapping[str, Any], policy: LabelPolicy) -> tuple[str, str, int] | None:
    """(member, item, gain) of an event that labels (else None)."""
    gain = policy.gains.get(str(ev.get("type")))
    user, item = ev.get("user_id"), ev.get("item_id")
    # an event stored by other code without a time, member or item labels nothing (a
    # time that is not one failed the sort or the window's bisect with a TypeError)
    if gain is None or not isinstance(ev.get("ts"), datetime) or user is None or item is None:
        return None
    return str(user), str(item), gain


def _outcomes(
    events: Iterable[Mapping[str, Any]],
    policy: LabelPolicy,
    named: Iterable[Mapping[str, Any]] = (),
) -> tuple[
    dict[tuple[str, str], tuple[list[datetime], list[int]]],
    dict[tuple[str, str], dict[str, int]],
    int,
]:
    """Labelling events by (member, item) in time order, by (member, request id), and the
    count of events of a labelling type that label nothing (no time, member or item)."""
    by_pair: dict[tuple[str, str], list[tuple[datetime, int]]] = defaultdict(list)
    # per (member, request id): a request id is the client's when it sent one (X-Request-ID),
    # so another member's events may name it; they never label this member's list
    by_request: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    unusable = 0
    for ev, windowed in chain(((e, True) for e in events), ((e, False) for e in named)):
        if (got := _labelled(ev, policy)) is None:
            unusable += str(ev.get("type")) in policy.gains
            continue
        user, item, gain = got
        if windowed:
            by_pair[(user, item)].append((ev["ts"], gain))
        if rid := ev.get("request_id"):
            seen = by_request[(user, str(rid))]
            seen[item] = max(seen.get(item, 0), gain)
    pairs = {}
    for key, evs in by_pair.items():
        evs.sort(key=lambda e: e[0])
        pairs[key] = ([t for t, _ in evs], [g for _, g in evs])
    return pairs, by_request, unusable


def join_outcomes(
    lists: Sequence[Mapping[str, Any]],
    events: Iterable[Mapping[str, Any]],
    policy: LabelPolicy | None = None,
    *,
    named: Iterable[Mapping[str, Any]] = (),
) -> LtrData:
    """Pure: grouped rows and labels from decoded served lists and raw events (module doc);
    ``named``: events that label only the list their request id names (no window)."""
    policy = policy or LabelPolicy()
    pairs, by_request, unusable = _outcomes(events, policy, named)
    window = timedelta(hours=policy.window_hours)
    Xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ranks: list[np.ndarray] = []
    groups, at, ids = [], [], []
    skipped = {"no_user": 0, "no_rows": 0, "no_features": 0, "no_positive": 0, "filled_rows": 0}
    skipped["unusable_events"] = unusable
    for doc in sorted(lists, key=lambda d: (d["at"], d["_id"])):
        user, t0 = doc.get("user_id"), doc["at"]
        items = list(doc.get("ids") or [])
        if not user:
            skipped["no_user"] += 1
            continue
        if len(items) < 2 or doc["X"].shape[0] != len(items):
            skipped["no_rows"] += 1
            continue
        if not doc.get("features"):  # the API's fallback answers: no ranker saw a feature
            skipped["no_features"] += 1
            continue
        X, shown = doc["X"], list(doc.get("shown") or [])
        if filled := set(doc.get("filled") or ()):  # not proposed by a source: left out
            keep = [r for r in range(len(items)) if r not in filled]
            row = {r: i for i, r in enumerate(keep)}
            items, X, shown = [items[r] for r in keep], X[keep], [row[r] for r in shown if r in row]
            skipped["filled_rows"] += len(filled)
            if len(items) < 2:
                skipped["no_rows"] += 1
                continue
        allowed = set(shown) if policy.scope == "shown" else set(range(len(items)))
        direct = by_request.get((str(user), str(doc["_id"])), {})
        y = np.zeros(len(items), dtype=np.int32)
        for r, item in enumerate(items):
            if r not in allowed:
                continue
            gain = direct.get(item, 0)
            hit = pairs.get((str(user), item))
            if hit is not None:
                times, gains = hit
                lo = bisect.bisect_left(times, t0)
                hi = bisect.bisect_right(times, t0 + window)
                if hi > lo:
                    gain = max(gain, max(gains[lo:hi]))
            y[r] = gain
        if y.max() <= 0:
            skipped["no_positive"] += 1
            continue
        rank = np.empty(len(items), dtype=np.int64)
        rest = [r for r in range(len(items)) if r not in set(shown)]
        rank[[*shown, *rest]] = np.arange(len(items))
        Xs.append(align_features(X, doc["features"]))
        ys.append(y)
        ranks.append(rank)
        groups.append(len(items))
        at.append(t0)
        ids.append(str(doc["_id"]))
    width = len(FEATURE_NAMES)
    return LtrData(
        np.concatenate(Xs) if Xs else np.zeros((0, width)),
        np.concatenate(ys) if ys else np.zeros(0, dtype=np.int32),
        np.asarray(groups, dtype=np.int32),
        at,
        ids,
        np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64),
        skipped,
    )


def ndcg_at(y: np.ndarray, groups: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Mean NDCG@k over groups (gain ``2**label - 1``, log2 discount; LightGBM's definition)."""
    out = []
    start = 0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for g in groups.tolist():
        yy, ss = y[start : start + g], scores[start : start + g]
        start += g
        ideal = np.sort(2.0**yy - 1)[::-1][:k]
        if ideal.sum() <= 0:
            continue
        got = (2.0 ** yy[np.argsort(-ss, kind="stable")][:k] - 1) @ disc[: min(k, g)]
        out.append(got / (ideal @ disc[: len(ideal)]))
    return float(np.mean(out)) if out else float("nan")


@dataclass
class LtrResult:
    """The model refitted on every list (``scorer``), its report, and the grid winner as
    fitted on the training lists only (``valid_scorer``: what the validation lists judged)."""

    scorer: LearnedScorer
    report: dict[str, Any]
    valid_scorer: LearnedScorer | None = None


def _fit(
    train: LtrData,
    valid: LtrData,
    params: Mapping[str, Any],
    *,
    max_rounds: int,
    early_stopping: int,
    k: int,
    seed: int,
) -> tuple[LearnedScorer, int, float]:
    model = train_lambdamart(
        train.X,
        train.y,
        train.groups,
        valid=(valid.X, valid.y, valid.groups),
        rounds=max_rounds,
        early_stopping=early_stopping,
        eval_at=k,
        params=params,
        seed=seed,
    )
    best = int(model.best_iteration or max_rounds)
    return model, best, ndcg_at(valid.y, valid.groups, model.score(valid.X), k)


def _valid_cut(n: int, valid_share: float, skipped: Mapping[str, int]) -> int:
    """The first validation list of ``n`` lists in serving order (the last ``valid_share``)."""
    if n < 2:
        raise ValueError(
            f"{n} logged list(s) with an outcome: need at least 2 to train and validate "
            f"(skipped: {dict(skipped)})"
        )
    return min(n - 1, max(1, round(n * (1.0 - valid_share))))


def _before(event: Mapping[str, Any], t: datetime) -> bool:
    return isinstance(event.get("ts"), datetime) and event["ts"] < t


def _names(event: Mapping[str, Any], lists: set[tuple[str, str]]) -> bool:
    """Whether ``event`` names one of ``lists`` ((member, request id)) as its own."""
    rid = event.get("request_id")
    return bool(rid) and (str(event.get("user_id")), str(rid)) in lists


def split_outcomes(
    lists: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    policy: LabelPolicy | None = None,
    *,
    valid_share: float = 0.2,
) -> tuple[LtrData, LtrData, LtrData]:
    """Pure: ``(train, valid, everything)`` for :func:`train_ltr` (``valid=``, ``refit=``).
    The last ``valid_share`` of the lists with an outcome validate, with every outcome; the
    lists served before the first of them train, labelled only by the events before it and by
    a later event that names one of them (its member's request id: that list's own outcome,
    however late it came; it labels only that list). An outcome of the validation period
    labelled training lists too, and a model that learnt it was judged on it again (outcomes
    nothing predicts, at random times: validation NDCG@10 0.62 against the logged order's
    0.28; kept apart, 0.31).
    ``everything``: every list with all its outcomes (the refit)."""
    everything = join_outcomes(lists, events, policy)
    n = len(everything.groups)
    valid_from = everything.at[_valid_cut(n, valid_share, everything.skipped)]
    first = bisect.bisect_left(everything.at, valid_from)  # lists served then validate too
    early = [d for d in lists if d["at"] < valid_from]
    named = {(str(d.get("user_id")), str(d["_id"])) for d in early}
    before = [e for e in events if _before(e, valid_from)]
    late = [e for e in events if not _before(e, valid_from) and _names(e, named)]
    train = join_outcomes(early, before, policy, named=late)
    return train, everything.part(slice(first, n)), everything


def train_ltr(
    data: LtrData,
    *,
    valid: LtrData | None = None,
    policy: LabelPolicy | None = None,
    valid_share: float = 0.2,
    max_rounds: int = 1000,
    early_stopping: int = 50,
    k: int = 10,
    params: Mapping[str, Any] | None = None,
    grid: Sequence[Mapping[str, Any]] = (),
    seed: int = 0,
    refit: LtrData | None = None,
) -> LtrResult:
    """Validate on later lists, pick parameters and rounds there, refit on all (module doc).

    ``valid``: the validation lists (served after every list of ``data``); without it the last
    ``valid_share`` of ``data``'s lists are (their outcomes label ``data``'s training lists
    too: :func:`split_outcomes` keeps them apart). ``grid``: parameter overrides (over
    ``params``) tried one by one; the one with the best validation NDCG@k wins (the first on
    ties, so list the simplest first). ``refit``: the lists the final model is fitted on
    (default: the training and validation lists)."""
    valid_in = valid
    if valid is None:
        n = len(data.groups)
        cut = _valid_cut(n, valid_share, data.skipped)
        train, valid = data.part(slice(0, cut)), data.part(slice(cut, n))
    else:
        train = data
        if len(train.groups) == 0 or len(valid.groups) == 0:
            raise ValueError(
                f"{len(train.groups)} training and {len(valid.groups)} validation list(s) "
                f"with an outcome: need both (skipped: {train.skipped}, {valid.skipped})"
            )
    base = dict(params or {})
    tried = []
    best_fit: tuple[float, int, dict[str, Any], LearnedScorer] | None = None
    for over in grid or [{}]:
        p = {**base, **over}
        fitted, rounds, score = _fit(
            train, valid, p, max_rounds=max_rounds, early_stopping=early_stopping, k=k, seed=seed
        )
        tried.append({"params": dict(over), "best_iteration": rounds, f"valid_ndcg@{k}": score})
        if best_fit is None or score > best_fit[0]:
            best_fit = (score, rounds, p, fitted)
    assert best_fit is not None
    model_valid, best, chosen, on_train = best_fit
    logged_valid = ndcg_at(valid.y, valid.groups, -valid.logged_rank.astype(float), k)
    everything = refit if refit is not None else concat_data([train, valid])
    final = train_lambdamart(
        everything.X,
        everything.y,
        everything.groups,
        rounds=best,
        eval_at=k,
        params=chosen,
        seed=seed,
    )
    report = {
        "features": list(FEATURE_NAMES),
        "label_policy": (policy or LabelPolicy()).model_dump(),
        "lists": len(everything.groups),
        "rows": len(everything.y),
        "skipped_lists": (  # ``data``'s (its parts carry none), or both given sets'
            dict(refit.skipped)
            if refit is not None
            else {
                key: data.skipped.get(key, 0) + (valid_in.skipped.get(key, 0) if valid_in else 0)
                for key in {*data.skipped, *(valid_in.skipped if valid_in else ())}
            }
        ),
        "labels": {
            str(v): int(c)
            for v, c in zip(*np.unique(everything.y, return_counts=True), strict=True)
        },
        "window": {"first": train.at[0].isoformat(), "last": valid.at[-1].isoformat()},
        "split": {
            "train_lists": len(train.groups),
            "valid_lists": len(valid.groups),
            "valid_from": valid.at[0].isoformat(),
        },
        "params": {**LTR_PARAMS, **chosen, "seed": seed},
        "grid": [{**t, f"valid_ndcg@{k}": round(t[f"valid_ndcg@{k}"], 5)} for t in tried],
        "best_iteration": best,
        "metrics": {
            f"valid_ndcg@{k}": round(model_valid, 5),
            f"valid_logged_ndcg@{k}": round(logged_valid, 5),
        },
        "importance": dict(
            zip(
                FEATURE_NAMES,
                (float(v) for v in final.booster.feature_importance("gain")),
                strict=True,
            )
        ),
    }
    return LtrResult(final, report, on_train)


def concat_data(parts: Sequence[LtrData]) -> LtrData:
    """Lists of several :class:`LtrData` in the given order (one training set)."""
    parts = [p for p in parts if len(p.groups)]
    if not parts:
        return join_outcomes([], [])  # no list: the empty data
    return LtrData(
        np.concatenate([p.X for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.groups for p in parts]),
        [t for p in parts for t in p.at],
        [i for p in parts for i in p.list_ids],
        np.concatenate([p.logged_rank for p in parts]),
    )


def save_model(result: LtrResult, out_dir: Path) -> tuple[Path, Path]:
    """``model-v<N>.txt`` (LightGBM text, feature names inside) and ``model-v<N>.json`` (the
    report), numbered like ``params-v<N>.json`` (never overwriting)."""
    text = result.scorer.model_text()
    model = write_next_version(
        out_dir, "model", ".txt", lambda fh, _v: fh.write(text), companions=(".json",)
    )
    version = int(model.stem.rsplit("-v", 1)[1])
    body = json.dumps({"version": version, "model": model.name, **result.report}, indent=2)
    return model, write_new(model.with_suffix(".json"), body + "\n")


async def load_ltr_inputs(
    db: Any,
    policy: LabelPolicy,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The served lists of ``[since, until)`` and the events that can label them (the
    policy's event types, up to ``window_hours`` after ``until``)."""
    lists = await ServedLog(db).read(since=since, until=until)
    query: dict[str, Any] = {"type": {"$in": sorted(policy.gains)}}
    if since is not None:
        query["ts"] = {"$gte": since}
    if until is not None:
        query.setdefault("ts", {})["$lt"] = until + timedelta(hours=policy.window_hours)
    with backend_errors("reading events for training failed"):
        events = (
            await db[EVENTS]
            .find(
                query, projection={"user_id": 1, "item_id": 1, "type": 1, "ts": 1, "request_id": 1}
            )
            .to_list(None)
        )
    return lists, events
