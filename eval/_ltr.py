"""The learning loop offline: a ranker learnt from served lists of the fitting period.

:func:`learn_ranker` runs production's loop on an evaluation split, with nothing from the
test period:

1. :func:`~opendisco.eval.replay` of the **validation** stage into its own namespace (items,
   reindex, every user's *training* positives as like events);
2. every user with validation targets asks the served pipeline for a list (``Discovery``, the
   API's path, the served-list log on as a side effect; exploration off): the logged lists
   hold the feature rows of every candidate the ranker saw;
3. the held-out **validation** positives are posted as later ``like`` events;
4. ``opendisco train ltr``'s code (``load_ltr_inputs`` → ``join_outcomes`` → ``train_ltr``,
   time split with early stopping) learns the ranker; the model is written as the next
   ``model-v<N>.txt`` of ``out_dir``.

The test stage is then scored through the served pipeline with ``model_file`` pointing at it
(:class:`~opendisco.eval.ServedRecommender` with those settings): the model never saw a test
positive, and its parameters were chosen on the validation lists only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from opendisco import clients
from opendisco._settings import Settings
from opendisco.rerank import LabelPolicy, join_outcomes, load_ltr_inputs, save_model, train_ltr
from opendisco.serving import Discovery

from ._data import Dataset
from ._served import like_event, replay
from ._split import Split

__all__ = ["learn_ranker", "log_lists"]


async def log_lists(
    settings: Settings,
    user_ids: Sequence[str],
    exclude: Sequence[Sequence[str]],
    *,
    k: int,
    concurrency: int = 4,
) -> int:
    """One served list per user through ``Discovery.recommend`` (logged as a side effect)."""
    motor = clients.motor(settings)
    os_client = clients.async_opensearch(settings)
    sem = asyncio.Semaphore(concurrency)
    try:
        disc = Discovery(settings, os_client, motor[settings.mongo_db])

        async def one(user: str, ex: Sequence[str]) -> None:
            async with sem:
                await disc.recommend(user, k=k, exclude=tuple(ex))

        await asyncio.gather(*(one(u, ex) for u, ex in zip(user_ids, exclude, strict=True)))
        await disc.drain()
        log = disc.served_log
        return log.written if log is not None else 0
    finally:
        motor.close()
        await os_client.close()


async def _post(settings: Settings, events: list[dict[str, Any]], now: datetime) -> int:
    motor = clients.motor(settings)
    os_client = clients.async_opensearch(settings)
    accepted = 0
    try:
        disc = Discovery(settings, os_client, motor[settings.mongo_db])
        for start in range(0, len(events), 1000):
            res = await disc.record_events(events[start : start + 1000], now=now)
            accepted += res.accepted
        return accepted
    finally:
        motor.close()
        await os_client.close()


async def _train_inputs(settings: Settings, policy: LabelPolicy) -> tuple[list, list]:
    motor = clients.motor(settings)
    try:
        return await load_ltr_inputs(motor[settings.mongo_db], policy)
    finally:
        motor.close()


def learn_ranker(
    settings: Settings,
    dataset: Dataset,
    split: Split,
    out_dir: Path,
    *,
    k: int = 10,
    users: Sequence[int] | None = None,
    fresh: bool = True,
    policy: LabelPolicy | None = None,
    seed: int = 0,
    progress: Callable[[str, int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Replay the validation stage, log lists, post validation positives, train (module doc).

    ``settings`` name the namespace used (a dedicated one: it is cleared when ``fresh``).
    Returns the model path and the training report (with the steps' timings)."""
    t0 = time.perf_counter()
    policy = policy or LabelPolicy()
    settings = settings.model_copy(
        update={"served_log": True, "explore_rate": 0.0, "model_file": None, "params_file": None}
    )
    stage = split.stage("validation")
    uidx = np.asarray(stage.evaluable if users is None else users, dtype=np.int64)
    rep = replay(settings, dataset, split, stage="validation", fresh=fresh, progress=progress)
    t1 = time.perf_counter()
    user_ids = [str(stage.users[u]) for u in uidx]
    exclude = [[str(stage.items[i]) for i in stage.history[u]] for u in uidx]
    logged = asyncio.run(log_lists(settings, user_ids, exclude, k=k))
    if progress:
        progress("lists", logged)
    t2 = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    outcomes = [
        {**like_event(str(stage.users[u]), str(stage.items[i]), now), "id": f"ltr-{u}-{i}"}
        for u in uidx
        for i in stage.targets[u]
    ]
    time.sleep(max(0.0, (now - datetime.now(UTC)).total_seconds()))
    accepted = asyncio.run(_post(settings, outcomes, now))
    lists, events = asyncio.run(_train_inputs(settings, policy))
    data = join_outcomes(lists, events, policy)
    result = train_ltr(data, policy=policy, k=k, seed=seed)
    t3 = time.perf_counter()
    result.report["inputs"] = {
        "replay": rep.__dict__,
        "logged_lists": logged,
        "outcome_events": accepted,
        "seconds": {
            "replay": round(t1 - t0, 1),
            "log": round(t2 - t1, 1),
            "outcomes_and_train": round(t3 - t2, 1),
        },
    }
    model, _ = save_model(result, out_dir)
    return model, result.report
