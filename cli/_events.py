"""``opendisco events post FILE``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from opendisco import clients
from opendisco._settings import Settings
from opendisco.signals import EventProcessor

from ._base import OpenDiscoGroup, pass_settings

__all__ = ["events_cmd"]


@click.group("events", cls=OpenDiscoGroup)
def events_cmd() -> None:
    """Post and inspect user events (impression, click, like, pass, skip, hide, match, message)."""


@events_cmd.command("post")
@click.argument("file", type=click.File("r"))
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 1000))
@pass_settings
def post_cmd(settings: Settings, file: Any, batch: int) -> None:
    """Apply events from FILE (a JSON array or JSON lines; `-` for stdin)."""
    try:
        text = file.read()
        stripped = text.lstrip()
        if stripped.startswith("["):
            events = json.loads(text)
        else:
            events = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, RecursionError) as exc:  # ValueError: JSON, UTF-8
        raise click.UsageError(f"{file.name}: not JSON / JSON lines: {exc}") from exc
    totals = asyncio.run(_post(settings, events, batch))
    click.echo(json.dumps(totals, indent=2))
    if totals["rejected"]:
        raise SystemExit(1)


async def _post(settings: Settings, events: list[Any], batch: int) -> dict[str, Any]:
    mc = clients.mongo_async(settings)
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
        await mc.close()
        await osc.close()
    return totals
