"""The learning loop offline: a ranker learnt from lists served over the fitting period.

:func:`learn_ranker` runs production's loop on an evaluation split, with nothing from the
test period. Production logs a list every time a member comes back and labels it with what
they liked afterwards; the replay does the same, walking every member's fitting history in
time order (:func:`~opendisco.eval.roll_split` names the parts):

1. :func:`~opendisco.eval.replay` of the **pre-period** into its own namespace: items (with
   popularity and ALS behaviour vectors from the pre-period only), reindex, every user's
   training positives except the last ``lists_per_user`` as like events;
2. **rolling rounds**: round after round, every member with a rolled positive left is served
   a list through ``Discovery`` (the API's path; the served-list log on, exploration off),
   then that positive is posted as a ``like``. Every list is labelled by the likes that
   follow it, as in production; rounds are aligned on each member's last rolled positive;
3. the **validation round**: every member with validation targets is served a list (their
   whole training history known), then the validation positives are posted;
4. ``opendisco train ltr``'s code (``load_ltr_inputs`` → ``join_outcomes`` → ``train_ltr``):
   the rolling lists, labelled only by likes posted before the validation round, train; the
   validation lists (labelled by the validation positives, which is exactly how the test
   stage is scored one period later) pick the number of rounds (early stopping); the
   parameters (:data:`LTR_GRID`) are picked on the per-member NDCG of the validation round
   and of the member-cross-fitted rolling lists (``opendisco.eval._ltr_train``: about
   ``lists_per_user + 1`` lists per member instead of one); the winner is refitted on both
   and written as the next ``model-v<N>.txt`` of ``out_dir``.
   :func:`relearn_ranker` runs this step alone on the lists an earlier loop logged.

The test stage is then scored through the served pipeline with ``model_file`` pointing at it
(:class:`~opendisco.eval.ServedRecommender` with those settings): the model never saw a test
positive, and every choice was made on the validation lists.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opendisco import clients
from opendisco._exceptions import InvalidInput
from opendisco._settings import Settings
from opendisco.ingest import Embedder
from opendisco.rerank import PERCENTILE_COLUMNS, LabelPolicy, save_model
from opendisco.serving import Discovery

from ._data import Dataset
from ._ltr_train import train_logged
from ._served import like_event, replay
from ._similarity import write_similarity
from ._split import Split, roll_split

__all__ = [
    "ITEMSIM_GRID",
    "LISTS_PER_USER",
    "LTR_ABLATIONS",
    "LTR_GRID",
    "Round",
    "learn_ranker",
    "log_lists",
    "relearn_ranker",
    "rolling_rounds",
    "unlearnable",
]

#: training positives per member that are each preceded by a logged list (the rolling rounds;
#: each round is served once per ITEMSIM_GRID configuration, so 5 keeps the loop near the cost
#: of one configuration at 10)
LISTS_PER_USER = 5
#: LightGBM settings tried (``opendisco.eval._ltr_select.fit_config``: each stops early on the
#: validation lists, then the highest mean per-member NDCG over the validation round and the
#: cross-fitted rolling lists wins; the first on ties): the objective (LightGBM's listwise
#: ``rank_xendcg`` and ``lambdarank``) crossed with small strongly regularised trees, larger
#: trees with many rows per leaf, and larger trees
LTR_GRID: tuple[dict[str, Any], ...] = tuple(
    {"objective": objective, **trees}
    for objective in ("rank_xendcg", "lambdarank")
    for trees in (
        {"num_leaves": 7, "min_data_in_leaf": 200, "lambda_l2": 10.0},
        {"num_leaves": 31, "min_data_in_leaf": 400},
        {"num_leaves": 63, "min_data_in_leaf": 100},
    )
)
#: ``itemsim_candidates`` configurations the loop serves and compares (simplest first; the
#: richer one is served only when the fitting period's lists prefer it: ``pick_config``)
ITEMSIM_GRID: tuple[int, ...] = (0, 300)
#: column groups refitted without, one at a time, on the validation lists (what each adds)
LTR_ABLATIONS: dict[str, tuple[str, ...]] = {
    "without item_sim": ("item_sim", "pct_item_sim"),
    "without item_sim_recent": ("item_sim_recent", "pct_item_sim_recent"),
    "without percentiles": tuple(f"pct_{c}" for c in PERCENTILE_COLUMNS),
}


@dataclass(frozen=True)
class Round:
    """Lists served to ``users`` (each excluding its ``exclude`` ids), then ``likes`` posted."""

    users: list[str]
    exclude: list[list[str]]
    likes: list[tuple[str, str]]


def rolling_rounds(split: Split, users: Sequence[int] | None = None) -> list[Round]:
    """The rounds of a :func:`~opendisco.eval.roll_split` split: one per rolled position
    (aligned on each member's last rolled positive), then the validation round (its
    ``stage("test")``). ``users``: indices of the members served (None: everyone)."""
    rolling, last = split.stage("validation"), split.stage("test")
    who = range(len(split.users)) if users is None else [int(u) for u in users]
    items, ids = split.items, split.users
    depth = max((len(rolling.targets[u]) for u in who), default=0)
    rounds = []
    for j in range(depth):
        rnd = Round([], [], [])
        for u in who:
            todo = rolling.targets[u]
            pos = j - (depth - len(todo))
            if pos < 0:
                continue
            rnd.users.append(str(ids[u]))
            rnd.exclude.append([str(items[i]) for i in (*rolling.history[u], *todo[:pos])])
            rnd.likes.append((str(ids[u]), str(items[todo[pos]])))
        rounds.append(rnd)
    done = [u for u in who if len(last.targets[u])]
    rounds.append(
        Round(
            [str(ids[u]) for u in done],
            [[str(items[i]) for i in last.history[u]] for u in done],
            [(str(ids[u]), str(items[i])) for u in done for i in last.targets[u]],
        )
    )
    return rounds


#: attempts at a list whose candidate sources failed (a loaded engine timing out): a training
#: list must be what the pipeline serves, not a degraded leftover
SERVE_ATTEMPTS = 3


async def _serve(disc: Discovery, rnd: Round, k: int, concurrency: int, tag: str) -> None:
    """Serve the round's lists; request ids ``<tag>.<hex>`` name the configuration and round."""
    sem = asyncio.Semaphore(concurrency)

    async def one(user: str, ex: Sequence[str]) -> None:
        async with sem:
            for _ in range(SERVE_ATTEMPTS):
                rid = f"{tag}.{uuid.uuid4().hex}"
                recs = await disc.recommend(user, k=k, exclude=tuple(ex), request_id=rid)
                if recs.served is not None or not recs.degraded:
                    return  # logged, or nothing eligible (not a failure)

    await asyncio.gather(*(one(u, ex) for u, ex in zip(rnd.users, rnd.exclude, strict=True)))
    await disc.drain()


async def _like(disc: Discovery, likes: Sequence[tuple[str, str]], batch: int = 1000) -> int:
    now = datetime.now(UTC)
    events = [{**like_event(u, i, now), "id": f"ltr-{u}-{i}"} for u, i in likes]
    accepted = 0
    for start in range(0, len(events), batch):
        accepted += (await disc.record_events(events[start : start + batch], now=now)).accepted
    return accepted


async def _run_rounds(
    settings: Settings,
    rounds: Sequence[Round],
    *,
    k: int,
    concurrency: int,
    progress: Callable[[str, int], None] | None,
    configs: Sequence[Settings] = (),
) -> tuple[int, int, datetime]:
    """Serve and like round by round; returns lists logged, likes accepted and the start of
    the last round (the validation round). With ``configs`` (settings of one namespace), every
    round is served once per configuration on the same state (request ids ``c<i>.r<j>.…``),
    then its likes are posted once."""
    mongo = clients.mongo_async(settings)
    os_client = clients.async_opensearch(settings)
    accepted, last_start = 0, datetime.now(UTC)
    try:
        discs = [Discovery(s, os_client, mongo[s.mongo_db]) for s in (configs or [settings])]
        for j, rnd in enumerate(rounds):
            last_start = datetime.now(UTC)
            for i, disc in enumerate(discs):
                await _serve(disc, rnd, k, concurrency, f"c{i}.r{j}")
            accepted += await _like(discs[0], rnd.likes)
            if progress:
                progress("lists", len(rnd.users) * len(discs))
        logs = [d.served_log for d in discs]
        return sum(log.written for log in logs if log is not None), accepted, last_start
    finally:
        await mongo.close()
        await os_client.close()


async def log_lists(
    settings: Settings,
    user_ids: Sequence[str],
    exclude: Sequence[Sequence[str]],
    *,
    k: int,
    concurrency: int = 4,
) -> int:
    """One served list per user through ``Discovery.recommend`` (logged as a side effect)."""
    written, _, _ = await _run_rounds(
        settings,
        [Round(list(user_ids), [list(e) for e in exclude], [])],
        k=k,
        concurrency=concurrency,
        progress=None,
    )
    return written


def unlearnable(split: Split, lists_per_user: int = LISTS_PER_USER) -> str | None:
    """Why the loop cannot learn a ranker from ``split`` (None: it can). It needs lists to
    train on — members with a training positive to roll (two or more) — and lists to pick on
    — members with validation positives; a release whose members rate a handful of movies
    has neither, and the loop logged nothing and stopped on an error."""
    if not any(len(v) for v in split.validation):
        return (
            "no member has validation positives (each needs more than "
            f"{split.n_test + 1} positives)"
        )
    if lists_per_user < 1 or not any(len(v) for v in roll_split(split, lists_per_user).validation):
        need = split.n_test + split.n_val + 2
        return (
            "no member has two training positives (one to know, one to roll: "
            f"{need} positives or more)"
        )
    return None


def learn_ranker(
    settings: Settings,
    dataset: Dataset,
    split: Split,
    out_dir: Path,
    *,
    k: int = 10,
    users: Sequence[int] | None = None,
    lists_per_user: int = LISTS_PER_USER,
    fresh: bool = True,
    policy: LabelPolicy | None = None,
    grid: Sequence[dict[str, Any]] = LTR_GRID,
    concurrency: int = 4,
    seed: int = 0,
    embedder: Embedder | None = None,
    ease_lambda: float | None = None,
    ease_items: int = 3000,
    itemsim_candidates: int | Sequence[int] = ITEMSIM_GRID,
    ablations: Mapping[str, Sequence[str]] = LTR_ABLATIONS,
    progress: Callable[[str, int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Replay the pre-period, serve and like round by round, validate, train (module doc).

    ``settings`` name the namespace used (a dedicated one: it is cleared when ``fresh``);
    ``users`` the members served (indices; None: every member with training positives);
    ``embedder`` encodes the catalogue (pass the test replay's: one encoding for both).
    ``ease_lambda`` (picked on validation by the caller): the namespace's item–item table
    (:func:`~opendisco.eval.write_similarity`) is fitted on the pre-period's positives only;
    None leaves it empty (the ``item_sim`` columns are then 0, the source off).
    ``itemsim_candidates``: the ``itemsim`` source sizes served and compared (0: off; simplest
    first); every round is served once per size, a ranker trained per size, and the size is
    picked on the fitting period's lists (``opendisco.eval._ltr_select``); the report's
    ``inputs.itemsim_candidates`` is the pick: serve the model with it.
    ``ablations``: column groups refitted without on the validation lists (reported, not used
    to pick).
    Returns the model path and the training report (with the steps' counts and timings)."""
    reason = unlearnable(split, lists_per_user)
    if reason:
        raise InvalidInput(f"{dataset.name}: no ranker to learn: {reason}")
    t0 = time.perf_counter()
    policy = policy or LabelPolicy()
    sizes = [itemsim_candidates] if isinstance(itemsim_candidates, int) else itemsim_candidates
    sizes = list(dict.fromkeys(sizes)) if ease_lambda is not None else [0]
    settings = settings.model_copy(
        update={
            "served_log": True,
            "explore_rate": 0.0,
            "model_file": None,
            "params_file": None,
            "itemsim_candidates": sizes[0],
        }
    )
    configs = [settings.model_copy(update={"itemsim_candidates": n}) for n in sizes]
    roll = roll_split(split, lists_per_user)
    rep = replay(
        settings,
        dataset,
        roll,
        stage="validation",
        fresh=fresh,
        embedder=embedder,
        progress=progress,
    )
    sim_rows = 0
    if ease_lambda is not None:
        pre = roll.stage("validation")
        sim_rows = write_similarity(settings, pre, lam=ease_lambda, max_items=ease_items)
    t1 = time.perf_counter()
    rounds = rolling_rounds(roll, users)
    logged, accepted, valid_from = asyncio.run(
        _run_rounds(
            settings, rounds, k=k, concurrency=concurrency, progress=progress, configs=configs
        )
    )
    t2 = time.perf_counter()
    result, pick = train_logged(
        settings,
        [(r.users, r.likes) for r in rounds],
        sizes,
        policy=policy,
        k=k,
        grid=grid,
        ablations=ablations,
        seed=seed,
        valid_from=valid_from,
    )
    t3 = time.perf_counter()
    result.report["inputs"] = {
        "replay": rep.__dict__,
        "lists_per_user": lists_per_user,
        "similarity_rows": sim_rows,
        "ease_lambda": ease_lambda,
        "itemsim_candidates": sizes[pick],
        "rounds": len(rounds),
        "logged_lists": logged,
        "outcome_events": accepted,
        "seconds": {
            "replay": round(t1 - t0, 1),
            "rounds": round(t2 - t1, 1),
            "train": round(t3 - t2, 1),
        },
    }
    model, _ = save_model(result, out_dir)
    return model, result.report


def relearn_ranker(
    settings: Settings,
    split: Split,
    out_dir: Path,
    *,
    k: int = 10,
    users: Sequence[int] | None = None,
    lists_per_user: int = LISTS_PER_USER,
    policy: LabelPolicy | None = None,
    grid: Sequence[dict[str, Any]] = LTR_GRID,
    seed: int = 0,
    itemsim_candidates: Sequence[int] = ITEMSIM_GRID,
    ablations: Mapping[str, Sequence[str]] = LTR_ABLATIONS,
) -> tuple[Path, dict[str, Any]]:
    """:func:`learn_ranker`'s training step alone, on the lists a loop with the same split,
    ``users``, ``lists_per_user`` and ``itemsim_candidates`` already logged in the ``settings``
    namespace (nothing is replayed or served): a change of the training step measured on the
    same lists. Returns the model path and the training report."""
    t0 = time.perf_counter()
    rounds = rolling_rounds(roll_split(split, lists_per_user), users)
    sizes = list(dict.fromkeys(itemsim_candidates))
    result, pick = train_logged(
        settings,
        [(r.users, r.likes) for r in rounds],
        sizes,
        policy=policy or LabelPolicy(),
        k=k,
        grid=grid,
        ablations=ablations,
        seed=seed,
    )
    result.report["inputs"] = {
        "relearned": True,
        "lists_per_user": lists_per_user,
        "itemsim_candidates": sizes[pick],
        "rounds": len(rounds),
        "seconds": {"train": round(time.perf_counter() - t0, 1)},
    }
    model, _ = save_model(result, out_dir)
    return model, result.report
