"""``opendisco demo``: the main job on the local default, end to end.

services up → index templates → sample marketplace into MongoDB → reindex (progress bar) →
recommendations (cold start, then personal after a few likes), similar items and search,
printed as tables → an API key and the API running in the background, with a curl example.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click
import httpx
from rich.console import Console
from rich.table import Table

from opendisco import clients
from opendisco._exceptions import ServiceError, ServiceTimeout
from opendisco._settings import Settings
from opendisco.api import create_key
from opendisco.ingest import generate_marketplace, write_sample
from opendisco.services import services
from opendisco.services._process import read_pid, spawn, stop_pid, tail, wait_until
from opendisco.serving import Discovery

from ._base import pass_settings
from ._ingest import reindex_cmd
from ._services import api_pid_file

__all__ = ["demo_cmd"]


def _table(title: str, recs: Any) -> None:
    table = Table(title=f"{title}  [dim]({recs.surface}, {recs.version})[/]")
    for col in ("#", "id", "title", "tags", "score", "sources"):
        table.add_column(col, overflow="fold")
    for n, r in enumerate(recs.items, start=1):
        table.add_row(
            str(n),
            r.id,
            str(r.item.get("title", ""))[:48],
            ", ".join(r.item.get("tags") or [])[:40],
            f"{r.score:.3f}",
            ", ".join(f"{s} {v:.2f}" for s, v in sorted(r.sources.items()))
            + (" [yellow]explore[/]" if r.explore else ""),
        )
    Console().print(table)


async def _show(settings: Settings, k: int) -> None:
    os_client = clients.async_opensearch(settings)
    mongo = clients.mongo_async(settings)
    try:
        disc = Discovery(settings, os_client, mongo[settings.mongo_db])
        user = "u1"
        cold = await disc.recommend(user, k=k)
        # a demo run before this one left u1's likes behind: then it is no cold start
        history = (
            "no history yet (cold start, steered by declared interests)"
            if cold.surface == "cold_start"
            else "with the likes of an earlier demo run"
        )
        _table(f"for {user}, {history}", cold)
        liked = cold.ids[:2]
        now = datetime.now(UTC)
        events = [
            {
                "id": f"demo-{user}-{i}-like",
                "type": "like",
                "user_id": user,
                "item_id": i,
                "ts": now,
            }
            for i in liked
        ]
        res = await disc.record_events(events)
        click.echo(f"posted likes of {liked}: accepted {res.accepted}, duplicates {res.duplicates}")
        personal = await disc.recommend(user, k=k)
        _table(f"for {user}, a moment after liking {', '.join(liked)}", personal)
        _table(f"similar to {liked[0]}", await disc.similar(liked[0], k=5))
        _table("search 'hiking and jazz' for u1", await disc.search("hiking and jazz", user, k=5))
    finally:
        await os_client.close()
        await mongo.close()


def _start_api(settings: Settings) -> str:
    url = f"http://{settings.api_host}:{settings.api_port}"
    pid_file = api_pid_file(settings)
    log_file = settings.state_dir / "logs" / "api.log"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    stop_pid(pid_file, grace=10)  # a demo API left running: restart it on this checkout's code
    pid = read_pid(pid_file)
    if pid is None:
        if ready():
            raise ServiceError(f"something else already answers on {url}")
        exe = os.path.join(os.path.dirname(sys.executable), "opendisco")
        pid = spawn(
            [exe, "serve"],
            log_file=log_file,
            pid_file=pid_file,
            env=dict(os.environ),
            cwd=settings.state_dir,
        )
    try:
        wait_until(ready, name="API", timeout=120, pid=pid, log_file=log_file)
    except ServiceTimeout as exc:
        raise ServiceError(f"{exc}\n{tail(log_file)}") from exc
    return url


@click.command("demo")
@click.option("--size", default=2000, show_default=True, help="Synthetic members to create.")
@click.option("-k", default=8, show_default=True, help="Items per list.")
@click.option("--api/--no-api", default=True, show_default=True, help="Leave the API running.")
@pass_settings
def demo_cmd(settings: Settings, size: int, k: int, api: bool) -> None:
    """Services up, sample data, reindex, recommendations printed, API up."""

    t0 = time.perf_counter()
    click.secho("1/5 services", bold=True)
    for svc in services(settings, echo=lambda m: click.echo(f"  {m}", err=True)):
        click.echo(f"  {svc.name}: {svc.up()}")
    click.secho(f"2/5 sample marketplace ({size} members) into MongoDB", bold=True)
    items, users = generate_marketplace(size, seed=7)
    counts = write_sample(settings, items, users)
    click.echo(f"  {counts}")
    click.secho(
        "3/5 reindex MongoDB → OpenSearch (embeddings, versioned index, alias swap)", bold=True
    )
    click.get_current_context().invoke(reindex_cmd, quiet=False)
    click.secho("4/5 recommendations", bold=True)
    asyncio.run(_show(settings, k))
    if not api:
        click.echo(f"done in {time.perf_counter() - t0:.0f}s")
        return
    click.secho("5/5 API", bold=True)
    with clients.mongo(settings) as mc:
        key, _doc = create_key(mc[settings.mongo_db], "demo", ("read", "write"), None)
    url = _start_api(settings)
    click.echo(f"  API up at {url} (docs {url}/docs; stop with `./dev services down`)")
    click.echo("  try:")
    click.echo(f"    curl -s -H 'X-API-Key: {key}' '{url}/v1/users/u1/recommendations?k=5'")
    click.echo(f"done in {time.perf_counter() - t0:.0f}s")
