"""``opendisco templates apply | reindex | sync | verify | dead-letters | sample`` (the ingest
team's commands)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from datetime import datetime
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

from opendisco._exceptions import IndexStateError
from opendisco._settings import Settings
from opendisco.ingest import (
    Syncer,
    generate_marketplace,
    load_movielens,
    purge_letters,
    read_letters,
    reindex,
    remove_partial_builds,
    run_sync,
    sync_once,
    verify,
    write_sample,
)

from ._base import pass_settings

__all__ = ["dead_letters_cmd", "reindex_cmd", "sample_cmd", "sync_cmd", "verify_cmd"]


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

    def progress(done: int, total: int | None) -> None:
        if bar is not None:
            bar.update(task, completed=done, total=total)

    ctx = bar if bar is not None else contextlib.nullcontext()
    with ctx:
        report = asyncio.run(reindex(settings, progress=progress))
    click.echo(
        f"{report.alias} -> {report.index}: {report.indexed}/{report.total} indexed, "
        f"{_letters(report)}, {report.encoded} encoded, {report.cache_hits} cache hits, "
        f"{report.caught_up} caught up, "
        f"{report.docs_per_s:,.0f} docs/s in {report.took_s:.1f}s"
    )
    if report.previous:
        click.echo(f"previous: {', '.join(report.previous)}")
    if report.removed:
        click.echo(f"removed: {', '.join(report.removed)}")


@click.command("sync")
@click.option("--once", is_flag=True, help="Catch up once over every partition and exit.")
@click.option(
    "--reconcile/--no-reconcile",
    default=True,
    show_default=True,
    help="With --once: then reconcile MongoDB and the index (hard deletes and backdated "
    "writes, which the change feed does not show on FerretDB), as a running worker does "
    "every `sync_reconcile_interval`.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level of the worker's log (stderr): leases, backoff, health, repairs.",
)
@pass_settings
def sync_cmd(settings: Settings, once: bool, reconcile: bool, log_level: str) -> None:
    """Stream MongoDB changes into the alias (change streams, or watermark polling), and
    the behaviour vectors `opendisco train` stored (their items are sent again).

    Several workers may run at once: they split the partitions of the feed under leases.
    A worker never exits on a backend error (it backs off and retries); it exits on a
    configuration error (no alias: run `opendisco reindex` first).
    """

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )

    def show(report: Any) -> None:
        click.echo(
            f"[{report.mode} p{','.join(map(str, report.partitions))}] {report.changes} "
            f"changes ({report.behaviour} trained vectors): {report.indexed} indexed, "
            f"{report.deleted} deleted, {report.conflicts} newer-already, {_letters(report)}, "
            f"{report.encoded} encoded"
            + (f"; partitions held elsewhere: {report.skipped}" if report.skipped else "")
        )

    def reconciled(report: Any) -> None:
        if report.repairs:
            click.echo(_reconcile_line(report))

    if not once and not reconcile:
        raise click.UsageError(
            "--no-reconcile applies to --once; a worker reconciles after its first pass, "
            "then every sync_reconcile_interval seconds (OPENDISCO_SYNC_RECONCILE_INTERVAL=0: "
            "never)"
        )
    if once:
        report = asyncio.run(sync_once(settings, reconcile=reconcile))
        show(report)
        if report.reconciled is not None:
            click.echo(_reconcile_line(report.reconciled))
        return

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_sync(settings, stop=stop, on_report=show, on_reconcile=reconciled)

    click.echo(f"syncing {settings.mongo_db}.{settings.items_collection} -> {settings.index_alias}")
    asyncio.run(main())


def _reconcile_line(report: Any) -> str:
    return (
        f"reconciled: {report.missing} missing, {report.behind} behind, {report.gone} "
        f"hard-deleted, {report.unversioned} without a version, "
        f"{report.ahead} ahead (newer than MongoDB: removed); "
        f"{report.indexed} indexed, {report.deleted} deleted, {_letters(report)} "
        f"in {report.took_s:.1f}s"
    )


def _letters(report: Any) -> str:
    """The dead-letter counters of a report (new refusals, known ones, resolved)."""
    return (
        f"{report.dead_lettered} dead-lettered ({report.already_dead_lettered} already), "
        f"{report.dead_letters_resolved} dead letters resolved"
        + (f", {report.dead_letters_purged} purged" if report.dead_letters_purged else "")
    )


@click.command("verify")
@click.option(
    "--show",
    default=10,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="Ids listed per kind of difference.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="First reconcile MongoDB and the index (hard deletes, backdated writes, missing or "
    "stale documents) over every partition no sync worker holds, and delete the partial "
    "indices of rebuilds that died (unless a reindex runs), then verify.",
)
@pass_settings
def verify_cmd(settings: Settings, show: int, repair: bool) -> None:
    """Compare MongoDB and the alias by ids, versions, content hashes; exit 1 on differences.

    Also listed (not differences): open dead letters, and the partial indices of rebuilds
    that died (`partial_builds`; the next reindex or `--repair` deletes them). And the
    members' profiles whose gender, age or preferences differ from their `users` document
    (`profiles_disagreeing`, counted by field): exit 1 on those too."""

    if repair:

        async def fix() -> Any:
            syncer = Syncer(settings)
            try:
                await syncer.check()
                return await syncer.reconcile(take_all=True)
            finally:
                await syncer.close()

        repaired = asyncio.run(fix())
        click.echo(_reconcile_line(repaired))
        skipped = sorted(set(range(settings.sync_partitions)) - set(repaired.partitions))
        if skipped:
            click.echo(
                f"  partitions held by running sync workers (they reconcile them): {skipped}"
            )
        try:
            removed = asyncio.run(remove_partial_builds(settings))
        except IndexStateError as exc:  # a reindex runs: its build is not a partial one
            click.echo(f"  partial builds kept: {exc}")
        else:
            if removed:
                click.echo(f"removed partial builds of rebuilds that died: {', '.join(removed)}")
    report = asyncio.run(verify(settings))
    click.echo(report.summary())
    names = ("missing", "extra", "stale", "mismatched", "partial_builds", "profiles_disagreeing")
    for name in names:
        values = getattr(report, name)
        if values:
            click.echo(f"  {name}: {values[:show]}{' …' if len(values) > show else ''}")
    if not report.ok or report.profiles_disagreeing:
        sys.exit(1)


@click.command("dead-letters")
@click.option("--all", "show_all", is_flag=True, help="Resolved records too (default: open).")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Records listed, newest first.",
)
@click.option(
    "--purge",
    is_flag=True,
    help="First delete the records resolved more than `dead_letter_days` ago (each "
    "reconcile pass and reindex does too); open records are never purged.",
)
@pass_settings
def dead_letters_cmd(settings: Settings, show_all: bool, limit: int, purge: bool) -> None:
    """List the documents ingest refused, with the reason; open until fixed or deleted.

    A record is resolved when its document is indexed at its version or later, or deleted
    from MongoDB; a refusal of a newer version reopens it. Resolved records are kept
    `dead_letter_days`, then purged.
    """
    if purge:
        purged = asyncio.run(purge_letters(settings))
        click.echo(
            f"purged {purged} dead letters resolved more than "
            f"{settings.dead_letter_days:g} days ago"
        )
    letters, opened = asyncio.run(read_letters(settings, resolved=show_all, limit=limit))
    click.echo(
        f"{settings.mongo_db}.{settings.items_collection}: {opened} open dead letters"
        + (" (all records, newest first)" if show_all else "")
    )
    for rec in letters:
        line = (
            f"{'open' if rec.get('resolved_at') is None else 'resolved':<8}  "
            f"{_when(rec.get('at'))}  {rec.get('source')}/{rec.get('stage')}  "
            f"{rec.get('doc_id')!r} v{rec.get('version')}  {str(rec.get('reason'))[:120]}"
        )
        if rec.get("resolved_at") is not None:
            line += (
                f"  -> {rec.get('resolved_by')} at v{rec.get('resolved_version')} "
                f"({_when(rec['resolved_at'])})"
            )
        click.echo(line)


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if isinstance(value, datetime) else str(value)


@click.command("sample")
@click.option(
    "-n",
    "--size",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Marketplace profiles.",
)
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--movielens",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Load a MovieLens release directory (ml-latest-small, ml-latest, ml-20m/25m/32m, "
    "ml-1m, ml-10m or ml-100k) instead.",
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
