"""The learning loop's training step, from the lists a namespace logged: one ranker per
candidate configuration, then the configuration picked (``opendisco.eval._ltr_select``).

:func:`train_logged` is what :func:`~opendisco.eval.learn_ranker` runs after its rounds, and
what :func:`~opendisco.eval.relearn_ranker` runs alone on lists an earlier loop logged: the
served lists and outcome events are read back from the namespace (``opendisco train ltr``'s
``load_ltr_inputs``), so a change of the training step is measured on the same lists without
serving them again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from opendisco import clients
from opendisco._settings import Settings
from opendisco.rerank import (
    LabelPolicy,
    LtrResult,
    ablation_ndcg,
    load_ltr_inputs,
    single_feature_ndcg,
)

from ._ltr_select import MIN_SE, adoption, fit_config, list_tag, pick_config, round_targets

__all__ = ["SELECT_FOLDS", "train_logged"]

#: member folds of the rolling lists' cross-fitted scores (grid and configuration choices)
SELECT_FOLDS = 5


async def _train_inputs(settings: Settings, policy: LabelPolicy) -> tuple[list, list]:
    mongo = clients.mongo_async(settings)
    try:
        return await load_ltr_inputs(mongo[settings.mongo_db], policy)
    finally:
        await mongo.close()


def train_logged(
    settings: Settings,
    rounds: Sequence[tuple[Sequence[str], Sequence[tuple[str, str]]]],
    sizes: Sequence[int],
    *,
    policy: LabelPolicy,
    k: int,
    grid: Sequence[Mapping[str, Any]],
    ablations: Mapping[str, Sequence[str]],
    seed: int = 0,
    valid_from: datetime | None = None,
) -> tuple[LtrResult, int]:
    """Train on the namespace's logged lists; returns the picked configuration's result (its
    report completed with the selection, single-feature and ablation figures) and its index.

    ``rounds``: (members served, likes posted after) per round of the loop, the last being
    the validation round; ``sizes``: the ``itemsim`` source size of each configuration (its
    lists carry request ids ``c<i>.…``); ``valid_from``: when the validation round began
    (None: its first logged list's time — no like is posted while a round is served).

    ``report["adoption"]``: whether the ranker is adopted, by :func:`pick_config`'s rule
    against the first configuration's lists in their served (linear) order on the same
    per-member value; a ranker not adopted is still trained and saved, but the linear
    pipeline is what should be served."""
    lists, events = asyncio.run(_train_inputs(settings, policy))
    last = len(rounds) - 1
    configs = {list_tag(d["_id"])[0] for d in lists}
    if not lists or max(configs) >= len(sizes):
        raise ValueError(
            f"{len(lists)} logged lists of configurations {sorted(configs)}: expected lists "
            f"of {len(sizes)} configuration(s) {list(sizes)}"
        )
    if valid_from is None:
        valid_from = min(d["at"] for d in lists if list_tag(d["_id"])[1] == last)
    before = [e for e in events if e["ts"] < valid_from]
    targets = round_targets(rounds)
    fits = [
        fit_config(
            [d for d in lists if list_tag(d["_id"])[0] == i],
            before,
            events,
            valid_from,
            targets,
            policy=policy,
            k=k,
            grid=grid,
            seed=seed,
            folds=SELECT_FOLDS,
        )
        for i in range(len(sizes))
    ]
    members = sorted({m for f in fits for m in f.served})
    pick, steps = pick_config([f.values(members) for f in fits], list(sizes))
    result, train, valid = fits[pick].result, fits[pick].train, fits[pick].valid
    # the same rule against the linear pipeline: the first configuration's lists in the order
    # they were served (the pipeline's defaults) vs the picked ranker's, per member
    adopted = adoption(
        fits[0].logged_values(members), fits[pick].values(members), f"ltr (itemsim {sizes[pick]})"
    )
    chosen = {key: v for key, v in result.report["params"].items() if key != "seed"}
    result.report["single_feature_valid_ndcg"] = single_feature_ndcg(valid, k)
    # comparable across candidate-set changes: a validation list without a positive among its
    # candidates scores 0 (train_ltr's metric averages only the lists with one)
    served = max(1, len(rounds[-1][0]))
    result.report["metrics"][f"valid_ndcg@{k}_all_lists"] = round(
        result.report["metrics"][f"valid_ndcg@{k}"] * len(valid.groups) / served, 5
    )
    result.report["metrics"]["valid_lists_served"] = served
    result.report["ablations"] = ablation_ndcg(train, valid, chosen, ablations, k=k, seed=seed)
    result.report["adoption"] = adopted
    result.report["selection"] = {
        "itemsim_candidates": list(sizes),
        "picked": sizes[pick],
        "members": len(members),
        "folds": SELECT_FOLDS,
        "min_se": MIN_SE,
        "comparisons": steps,
        "per_config": [
            {"itemsim_candidates": n, **f.summary} for n, f in zip(sizes, fits, strict=True)
        ],
    }
    return result, pick
