"""The item–item table is fitted on a stage's fitting positives only: nothing of the held-out
period (the stage's targets, or any later period) reaches a row."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from opendisco import clients
from opendisco.eval import Split, roll_split, similarity_rows, write_similarity
from opendisco.signals import ItemSimilarity

ITEMS = 300  # a small EASE keeps the suite quick


def test_rows_do_not_depend_on_the_held_out_targets(ml_split: Split) -> None:
    stage = ml_split.stage("test")
    rows = similarity_rows(stage, lam=50.0, max_items=ITEMS)
    rng = np.random.default_rng(0)
    shuffled = [rng.permutation(len(stage.items))[: len(t)] for t in stage.targets]
    assert similarity_rows(replace(stage, targets=shuffled), lam=50.0, max_items=ITEMS) == rows
    # ...while the fitting history does move them (the check above can fail)
    leaked = [np.concatenate([h, t]) for h, t in zip(stage.history, stage.targets, strict=True)]
    assert similarity_rows(replace(stage, history=leaked), lam=50.0, max_items=ITEMS) != rows


def test_the_learning_loops_table_sees_only_the_pre_period(ml_split: Split) -> None:
    """The learning loop fits its table on ``roll_split(...).stage("validation")``: the
    member's positives before the rolled ones, without the validation or test targets."""
    pre = roll_split(ml_split, 5).stage("validation")
    test = ml_split.stage("test")
    for u in range(len(pre.users)):
        held = {*test.targets[u].tolist(), *ml_split.stage("validation").targets[u].tolist()}
        assert not held & set(pre.history[u].tolist())
    assert pre.matrix.nnz < ml_split.stage("validation").matrix.nnz


async def test_write_replaces_the_namespaces_table(ml_split: Split, eval_settings: Any) -> None:
    settings = eval_settings.model_copy(update={"mongo_db": f"{eval_settings.mongo_db}sim"})
    stage = ml_split.stage("validation")
    rows = similarity_rows(stage, lam=50.0, max_items=ITEMS)
    n = await _run(write_similarity, settings, stage, lam=50.0, max_items=ITEMS)
    assert n == len(rows) > 0
    mongo = clients.mongo_async(settings)
    try:
        some = sorted(rows)[:20]
        assert await ItemSimilarity(mongo[settings.mongo_db]).rows(some) == {
            s: rows[s] for s in some
        }
    finally:
        await ItemSimilarity(mongo[settings.mongo_db]).clear()
        await mongo.close()


async def _run(fn: Any, *args: Any, **kw: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn, *args, **kw)
