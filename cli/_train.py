"""``opendisco train``: ``als`` (behavioural item vectors), ``similarity`` (the EASE item–item
table the ranker's ``item_sim`` feature reads) and ``ltr`` (a LambdaMART ranker from the
served-list log and later outcomes). ``opendisco train [ALS OPTIONS]`` is ``train als``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import numpy as np
import scipy.sparse as sp
from rich.progress import Progress

from opendisco import clients
from opendisco._exceptions import InvalidInput
from opendisco._settings import Settings
from opendisco.ingest import load_movielens, publish_behaviour
from opendisco.rerank import (
    LabelPolicy,
    ease_neighbours,
    load_ltr_inputs,
    save_model,
    split_outcomes,
    train_als,
    train_ltr,
)
from opendisco.signals import EVENTS, ItemSimilarity

from ._base import DefaultGroup, out_dir_ready, pass_settings

__all__ = ["train_cmd", "when"]


def _movielens_positives(path: Path, min_rating: float | None) -> list[tuple[str, str, float]]:
    """Ratings at or above ``min_rating`` (default: the release's own threshold, 4/5 of the
    top of its rating scale)."""
    data = load_movielens(path)
    cut = data.positive_threshold if min_rating is None else min_rating
    return [(str(r[0]), str(r[1]), 1.0) for r in data.ratings if float(r[2]) >= cut]


async def _event_positives(db: Any) -> list[tuple[str, str, float]]:
    docs = (
        await db[EVENTS]
        .find(
            {"weight": {"$gt": 0}, "applied": True},
            projection={"user_id": 1, "item_id": 1, "weight": 1},
        )
        .to_list(None)
    )
    return [(d["user_id"], d["item_id"], float(d["weight"])) for d in docs]


async def _positives(
    db: Any, movielens: Path | None, min_rating: float | None
) -> list[tuple[str, str, float]]:
    """What ALS and the item-item table train on: a MovieLens file's ratings at or above
    ``min_rating`` when given, else the event log's positives; none is an input error."""
    if movielens is not None:
        positives = _movielens_positives(movielens, min_rating)
    else:
        positives = await _event_positives(db)
    if not positives:
        raise InvalidInput("no positive interactions to train on")
    return positives


async def _train_als(
    settings: Settings,
    movielens: Path | None,
    min_rating: float | None,
    iterations: int,
    dry_run: bool,
) -> dict[str, Any]:
    mc = clients.mongo_async(settings)
    db = mc[settings.mongo_db]
    try:
        positives = await _positives(db, movielens, min_rating)
        click.echo(f"ALS on {len(positives):,} positives (factors={settings.behaviour_dim})")
        model = train_als(positives, factors=settings.behaviour_dim, iterations=iterations)
        vectors = model.vectors()
        report: dict[str, Any] = {
            "users": len(model.user_ids),
            "items": len(model.item_ids),
            "vectors": len(vectors),
        }
        if not dry_run:
            report.update(await _write(db, settings, vectors))
    finally:
        await mc.close()
    return {"als": report}


async def _write(db: Any, settings: Settings, vectors: dict[str, list[float]]) -> dict[str, Any]:
    """Publish the vectors as the served model, whole (``publish_behaviour``)."""
    with Progress(transient=True) as progress:
        task = progress.add_task("writing behaviour vectors", total=len(vectors))
        done = await publish_behaviour(
            db, settings, vectors, progress=lambda n: progress.advance(task, n)
        )
    return {"written": done.written, "version": done.version}


def _positives_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--movielens`` and ``--min-rating``: where the trainers' positives come from
    (:func:`_positives`)."""
    fn = click.option(
        "--min-rating",
        type=float,
        default=None,
        help="Positive from this rating up  [default: 4/5 of the top of the data's scale, "
        "4 stars on MovieLens].",
    )(fn)
    return click.option(
        "--movielens",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Train on MovieLens ratings ≥ --min-rating instead of logged positive events.",
    )(fn)


@click.group("train", cls=DefaultGroup, default="als")
def train_cmd() -> None:
    """Learn from interactions: `als` (behavioural item vectors, the default) or `ltr` (a
    LambdaMART ranker from the served-list log and later outcomes)."""


@train_cmd.command("als")
@_positives_options
@click.option("--iterations", default=15, show_default=True, type=click.IntRange(1, 200))
@click.option("--dry-run", is_flag=True, help="Train, but do not store the vectors.")
@pass_settings
def als_cmd(
    settings: Settings,
    movielens: Path | None,
    min_rating: float | None,
    iterations: int,
    dry_run: bool,
) -> None:
    """Learn behavioural item vectors (implicit ALS) and store them for the engine.

    The vectors go to a collection of their own beside the behaviour collection
    (`item_behaviour_collection`), never into the items (the application's documents: their
    fields, `version` and `updated_at` stay untouched), and the model is published whole
    once all are written: a run killed midway leaves the previous model served, and two runs
    at once publish one after the other. The next `opendisco sync` pass sends each item again
    with its new vector, so it reaches OpenSearch without re-encoding text.
    """
    report = asyncio.run(_train_als(settings, movielens, min_rating, iterations, dry_run))
    click.echo(json.dumps(report, indent=2))


def _positives_matrix(positives: list[tuple[str, str, float]]) -> tuple[sp.csr_matrix, list[str]]:
    """Pure: the binary member x item matrix of ``positives`` and its column ids."""
    users = {u: j for j, u in enumerate(dict.fromkeys(u for u, _, _ in positives))}
    items = list(dict.fromkeys(i for _, i, _ in positives))
    col = {i: j for j, i in enumerate(items)}
    rows = np.array([users[u] for u, _, _ in positives])
    cols = np.array([col[i] for _, i, _ in positives])
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), len(items)))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m, items


async def _train_similarity(
    settings: Settings, movielens: Path | None, min_rating: float | None, lam: float, **kw: Any
) -> dict[str, Any]:
    dry_run = kw.pop("dry_run")
    mc = clients.mongo_async(settings)
    db = mc[settings.mongo_db]
    try:
        positives = await _positives(db, movielens, min_rating)
        matrix, items = _positives_matrix(positives)
        rows = ease_neighbours(matrix, items, lam=lam, **kw)
        report: dict[str, Any] = {"positives": len(positives), "items": len(items)}
        report["rows"] = len(rows)
        if not dry_run:
            version = datetime.now(UTC).strftime("ease-%Y%m%dT%H%M%S")
            report["written"] = await ItemSimilarity(db).replace(rows, version)
            report["version"] = version
    finally:
        await mc.close()
    return {"similarity": report}


@train_cmd.command("similarity")
@_positives_options
@click.option(
    "--lam",
    default=200.0,
    show_default=True,
    type=click.FloatRange(min=0.0, min_open=True),
    help="EASE ridge; pick it on validation (bench/eval.py reports the λ it picked).",
)
@click.option("--max-items", default=3000, show_default=True, type=click.IntRange(2, 20000))
@click.option("--top-n", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--dry-run", is_flag=True, help="Fit, but do not replace the table.")
@pass_settings
def similarity_cmd(
    settings: Settings, movielens: Path | None, min_rating: float | None, **kw: Any
) -> None:
    """Fit EASE on the positives and replace the `item_similarity` table (each item's
    `--top-n` heaviest neighbours among the `--max-items` most liked items). The learnt
    ranker's `item_sim` feature sums the rows of the member's recent positives."""
    report = asyncio.run(_train_similarity(settings, movielens, min_rating, **kw))
    click.echo(json.dumps(report, indent=2))


def when(value: str | None) -> datetime | None:
    """An ISO time, or ``<N>d``/``<N>h`` ago."""
    if not value:
        return None
    now = datetime.now(UTC)
    if value[:-1].isdigit() and value[-1] in "dh":
        n = int(value[:-1])
        try:
            return now - (timedelta(days=n) if value[-1] == "d" else timedelta(hours=n))
        except OverflowError as exc:
            raise click.BadParameter(f"{value!r}: further back than any date") from exc
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: an ISO time or N[d|h]") from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


async def _train_ltr(
    settings: Settings,
    policy: Any,
    since: datetime | None,
    until: datetime | None,
    valid_share: float,
    **kw: Any,
) -> tuple[Any, dict[str, Any]]:
    mc = clients.mongo_async(settings)
    try:
        lists, events = await load_ltr_inputs(
            mc[settings.mongo_db], policy, since=since, until=until
        )
    finally:
        await mc.close()
    try:
        train, valid, data = split_outcomes(lists, events, policy, valid_share=valid_share)
        result = train_ltr(train, valid=valid, refit=data, policy=policy, **kw)
    except ValueError as exc:
        raise InvalidInput(f"{exc} (from {len(lists)} logged lists, {len(events)} events)") from exc
    return result, {"logged_lists": len(lists), "events": len(events)}


@train_cmd.command("ltr")
@click.option(
    "--out",
    "out_dir",
    default=Path("models"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the versioned model-v<N>.txt and its model-v<N>.json report.",
)
@click.option(
    "--labels",
    default=None,
    help="Gains over the defaults, e.g. 'like=2,match=4,message=3' (pass/skip/hide are 0).",
)
@click.option("--window-hours", default=168.0, show_default=True, type=click.FloatRange(0.01))
@click.option(
    "--scope",
    type=click.Choice(["candidates", "shown"]),
    default="candidates",
    show_default=True,
    help="Label every logged candidate, or only what the list showed.",
)
@click.option("--since", default=None, help="Lists served since (ISO time or N[d|h] ago).")
@click.option("--until", default=None, help="Lists served before (ISO time or N[d|h] ago).")
@click.option("--valid-share", default=0.2, show_default=True, type=click.FloatRange(0.05, 0.5))
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 500))
@click.option("--seed", default=0, show_default=True)
@pass_settings
def ltr_cmd(
    settings: Settings,
    out_dir: Path,
    labels: str | None,
    window_hours: float,
    scope: str,
    since: str | None,
    until: str | None,
    valid_share: float,
    k: int,
    seed: int,
) -> None:
    """Train a LambdaMART ranker on logged lists joined with later outcomes.

    Every served list (`served_lists`: the candidates' feature rows) is labelled by the
    member's events on its candidates within --window-hours; the latest --valid-share of the
    lists validate (early stopping on NDCG@k; the lists before them are labelled only by the
    events before them), then the model is refitted on all. Writes the
    next model-v<N>.txt and model-v<N>.json (feature schema, label policy, metrics) into
    --out; serve it with `model_file` (OPENDISCO_MODEL_FILE).
    """
    try:
        policy = LabelPolicy.parse(labels, window_hours=window_hours, scope=scope)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--labels") from exc
    out_dir_ready(out_dir)
    result, counts = asyncio.run(
        _train_ltr(
            settings,
            policy,
            when(since),
            when(until),
            valid_share=valid_share,
            k=k,
            seed=seed,
        )
    )
    result.report["inputs"] = counts
    model, report = save_model(result, out_dir)
    metrics = result.report["metrics"]
    click.echo(json.dumps({"model": str(model), "report": str(report), **metrics}, indent=2))
