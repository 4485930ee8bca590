"""``opendisco train`` (behavioural vectors, LambdaMART) and ``opendisco events post FILE``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress

from opendisco import clients
from opendisco._exceptions import InvalidInput
from opendisco._settings import Settings
from opendisco.ingest import load_movielens
from opendisco.rerank import lambdamart_dataset, train_als, train_lambdamart, write_behaviour
from opendisco.signals import EVENTS, EventProcessor

from ._base import OpenDiscoGroup, pass_settings

__all__ = ["events_cmd", "train_cmd"]


def _movielens_positives(path: Path, min_rating: float) -> list[tuple[str, str, float]]:
    data = load_movielens(path)
    return [(str(r[0]), str(r[1]), 1.0) for r in data.ratings if float(r[2]) >= min_rating]


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


async def _train(
    settings: Settings,
    movielens: Path | None,
    min_rating: float,
    iterations: int,
    lambdamart: Path | None,
    dry_run: bool,
) -> dict[str, Any]:

    mc = clients.motor(settings)
    db = mc[settings.mongo_db]
    report: dict[str, Any] = {}
    try:
        if movielens is not None:
            positives = _movielens_positives(movielens, min_rating)
        else:
            positives = await _event_positives(db)
        if not positives:
            raise InvalidInput("no positive interactions to train on")
        click.echo(f"ALS on {len(positives):,} positives (factors={settings.behaviour_dim})")
        model = train_als(positives, factors=settings.behaviour_dim, iterations=iterations)
        vectors = model.vectors()
        report["als"] = {
            "users": len(model.user_ids),
            "items": len(model.item_ids),
            "vectors": len(vectors),
        }
        if not dry_run:
            report["als"]["written"] = await _write(db, settings, vectors)
        if lambdamart is not None:
            report["lambdamart"] = await _train_ltr(db, lambdamart)
    finally:
        mc.close()
    return report


async def _write(db: Any, settings: Settings, vectors: dict[str, list[float]]) -> int:
    ids = list(vectors)
    step = 1000
    done = 0
    with Progress(transient=True) as progress:
        task = progress.add_task("writing behaviour vectors", total=len(ids))
        for k in range(0, len(ids), step):
            chunk = {i: vectors[i] for i in ids[k : k + step]}
            done += await write_behaviour(db, settings.items_collection, chunk)
            progress.advance(task, len(chunk))
    return done


async def _train_ltr(db: Any, out: Path) -> dict[str, Any]:
    docs = (
        await db[EVENTS]
        .find({"type": {"$in": ["impression", "click", "like", "message", "match"]}})
        .to_list(None)
    )
    X, y, groups = lambdamart_dataset(docs)
    try:
        scorer = train_lambdamart(X, y, groups)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    scorer.save(out)
    return {"rows": len(y), "requests": len(groups), "model": str(out)}


@click.command("train")
@click.option(
    "--movielens",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Train on MovieLens ratings ≥ --min-rating instead of logged positive events.",
)
@click.option("--min-rating", default=4.0, show_default=True)
@click.option("--iterations", default=15, show_default=True, type=click.IntRange(1, 200))
@click.option(
    "--lambdamart",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also train LambdaMART from logged impressions/clicks and save the model here.",
)
@click.option("--dry-run", is_flag=True, help="Train, but do not write vectors to MongoDB.")
@pass_settings
def train_cmd(
    settings: Settings,
    movielens: Path | None,
    min_rating: float,
    iterations: int,
    lambdamart: Path | None,
    dry_run: bool,
) -> None:
    """Learn behavioural item vectors (implicit ALS) and write them into items' `behaviour`.

    Each written item gets `version + 1` and a fresh `updated_at`, so the ingest sync path
    carries the vector to OpenSearch without re-encoding text.
    """
    report = asyncio.run(_train(settings, movielens, min_rating, iterations, lambdamart, dry_run))
    click.echo(json.dumps(report, indent=2))


@click.group("events", cls=OpenDiscoGroup)
def events_cmd() -> None:
    """Post and inspect user events (impression, click, like, pass, skip, hide, match, message)."""


@events_cmd.command("post")
@click.argument("file", type=click.File("r"))
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 1000))
@pass_settings
def post_cmd(settings: Settings, file: Any, batch: int) -> None:
    """Apply events from FILE (a JSON array or JSON lines; `-` for stdin)."""
    text = file.read()
    try:
        stripped = text.lstrip()
        if stripped.startswith("["):
            events = json.loads(text)
        else:
            events = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"{file.name}: not JSON / JSON lines: {exc}") from exc
    totals = asyncio.run(_post(settings, events, batch))
    click.echo(json.dumps(totals, indent=2))
    if totals["rejected"]:
        raise SystemExit(1)


async def _post(settings: Settings, events: list[Any], batch: int) -> dict[str, Any]:
    mc = clients.motor(settings)
    osc = clients.async_opensearch(settings)
    totals: dict[str, Any] = {"accepted": 0, "duplicates": 0, "recovered": 0, "rejected": []}
    try:
        proc = EventProcessor(settings, mc[settings.mongo_db], osc)
        for k in range(0, len(events), batch):
            res = await proc.apply(events[k : k + batch])
            totals["accepted"] += res.accepted
            totals["duplicates"] += res.duplicates
            totals["recovered"] += res.recovered
            totals["rejected"] += [{"index": k + i, "reason": r} for i, r in res.rejected]
    finally:
        mc.close()
        await osc.close()
    return totals
