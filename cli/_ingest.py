"""``opendisco templates apply | reindex | sync | verify | sample`` (the ingest team's commands)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from opendisco._settings import Settings
from opendisco.ingest import (
    generate_marketplace,
    load_movielens,
    reindex,
    run_sync,
    sync_once,
    verify,
    write_sample,
)

from ._base import pass_settings

__all__ = ["reindex_cmd", "sample_cmd", "sync_cmd", "verify_cmd"]


def _progress(label: str) -> tuple[Any, Any]:
    class Rate(TextColumn):
        def __init__(self) -> None:
            super().__init__("")

        def render(self, task: Any) -> Any:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} docs/s" if speed else "… docs/s")

    bar = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=False,
        console=None,
    )
    task = bar.add_task(label, total=None)
    return bar, task


@click.command("reindex")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_settings
def reindex_cmd(settings: Settings, quiet: bool) -> None:
    """Rebuild the items index from MongoDB and swap the read alias atomically."""

    bar, task = _progress("reindex") if not quiet else (None, None)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(task, completed=done, total=total)

    ctx = bar if bar is not None else contextlib.nullcontext()
    with ctx:
        report = asyncio.run(reindex(settings, progress=progress))
    click.echo(
        f"{report.alias} -> {report.index}: {report.indexed}/{report.total} indexed, "
        f"{report.dead_lettered} dead-lettered, {report.encoded} encoded, "
        f"{report.cache_hits} cache hits, {report.caught_up} caught up, "
        f"{report.docs_per_s:,.0f} docs/s in {report.took_s:.1f}s"
    )
    if report.previous:
        click.echo(f"previous: {', '.join(report.previous)}")
    if report.removed:
        click.echo(f"removed: {', '.join(report.removed)}")


@click.command("sync")
@click.option("--once", is_flag=True, help="Catch up once and exit.")
@pass_settings
def sync_cmd(settings: Settings, once: bool) -> None:
    """Stream MongoDB changes into the alias (change streams, or watermark polling)."""

    def show(report: Any) -> None:
        click.echo(
            f"[{report.mode}] {report.changes} changes: {report.indexed} indexed, "
            f"{report.deleted} deleted, {report.conflicts} newer-already, "
            f"{report.dead_lettered} dead-lettered, {report.encoded} encoded"
        )

    if once:
        show(asyncio.run(sync_once(settings)))
        return

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_sync(settings, stop=stop, on_report=show)

    click.echo(f"syncing {settings.mongo_db}.{settings.items_collection} -> {settings.index_alias}")
    asyncio.run(main())


@click.command("verify")
@click.option("--show", default=10, show_default=True, help="Ids listed per kind of difference.")
@pass_settings
def verify_cmd(settings: Settings, show: int) -> None:
    """Compare MongoDB and the alias by ids, versions, content hashes; exit 1 on differences."""

    report = asyncio.run(verify(settings))
    click.echo(report.summary())
    for name in ("missing", "extra", "stale", "mismatched"):
        values = getattr(report, name)
        if values:
            click.echo(f"  {name}: {values[:show]}{' …' if len(values) > show else ''}")
    if not report.ok:
        sys.exit(1)


@click.command("sample")
@click.option("-n", "--size", default=1000, show_default=True, help="Marketplace profiles.")
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--movielens",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Load a MovieLens directory (ml-latest-small or ml-100k) instead.",
)
@pass_settings
def sample_cmd(settings: Settings, size: int, seed: int, movielens: Path | None) -> None:
    """Write a seeded synthetic marketplace (or MovieLens) into MongoDB."""

    if movielens is not None:
        data = load_movielens(movielens)
        items, users = data.items, data.users
        click.echo(
            f"{data.format}: {len(items)} movies, {len(users)} users, {len(data.ratings)} ratings"
        )
    else:
        items, users = generate_marketplace(size, seed)
    counts = write_sample(settings, items, users)
    click.echo(
        f"{settings.mongo_db}.{settings.items_collection}: {counts['items']} items, "
        f"{counts['users']} users written"
    )
