"""``opendisco recommend USER`` and ``opendisco similar ITEM``: what the API would serve.

By default both go through the served pipeline (``opendisco.pipeline.Discovery``: candidates
from one ``_msearch``, batched features, rerank), so the table is the final order; with
``--explain`` the candidate stage (rendered queries, per-source RRF shares, OpenSearch score
components) is printed first, then which rerank step moved each served item.
``--candidates`` shows the candidate stage alone (``opendisco.queries.generate_candidates``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from opendisco._settings import Settings

from ._base import pass_settings
from ._templates import abbreviate

__all__ = ["register"]

SURFACES = ["for_you", "cold_start", "trending", "search", "similar"]


def _load_user(settings: Settings, user_id: str) -> tuple[dict[str, Any] | None, dict | None]:
    from pymongo.errors import PyMongoError

    from opendisco import clients
    from opendisco._exceptions import StoreBackendError

    client = clients.mongo(settings)
    try:
        db = client[settings.mongo_db]
        return db["users"].find_one({"_id": user_id}), db["user_state"].find_one({"_id": user_id})
    except PyMongoError as exc:
        raise StoreBackendError(f"reading user {user_id!r} failed: {exc}") from exc
    finally:
        client.close()


def _run(settings: Settings, req: Any) -> Any:
    from opendisco import clients
    from opendisco.queries import generate_candidates

    async def main() -> Any:
        client = clients.async_opensearch(settings)
        try:
            return await generate_candidates(client, settings, req)
        finally:
            await client.close()

    return asyncio.run(main())


def _print(cs: Any, title: str, explain: bool, show: int) -> None:
    console = Console()
    weights = cs.rendered["fusion"].get("weights", {})
    rc = float(cs.rendered["fusion"].get("rank_constant", 60))
    if explain:
        console.rule(f"rendered queries ({cs.template_version})")
        console.print_json(json.dumps(abbreviate(cs.rendered)))
    table = Table(title=title, show_lines=False)
    for col in ("#", "id", "title", "kind", "fused", "sources (score #rank)"):
        table.add_column(col, overflow="fold")
    for n, c in enumerate(cs.candidates[:show], start=1):
        srcs = ", ".join(f"{s} {c.sources[s]:.3f} #{c.ranks[s]}" for s in sorted(c.sources))
        mark = " [yellow](explore)[/]" if c.explore else ""
        table.add_row(
            str(n),
            c.id,
            str(c.item.get("title", ""))[:60],
            str(c.item.get("kind", "")),
            f"{c.fused:.4f}",
            srcs + mark,
        )
    console.print(table)
    console.print(
        f"template {cs.template_version}  engine took {cs.took_ms} ms  "
        f"round trip {cs.wall_ms:.0f} ms  sources {cs.source_took}"
        + (f"  skipped {cs.skipped}" if cs.skipped else "")
    )
    if cs.errors:
        console.print(f"[red]degraded: {cs.errors}[/]")
    if not explain:
        return
    console.rule("per-component contributions")
    for c in cs.candidates[:show]:
        console.print(f"[bold]{c.id}[/] fused {c.fused:.4f}")
        for s in sorted(c.ranks):
            share = float(weights.get(s, 1.0)) / (rc + c.ranks[s])
            console.print(
                f"  {s}: rank {c.ranks[s]}  score {c.sources[s]:.4f}  "
                f"rrf {weights.get(s, 1.0)}/({rc:g}+{c.ranks[s]}) = {share:.4f}"
            )
            for comp in c.explanations.get(s, [])[1:]:
                indent = "    " + "  " * comp["depth"]
                console.print(
                    f"{indent}{comp['value']:.4f}  {comp['description']}", highlight=False
                )


def _served(settings: Settings, call: Any) -> Any:
    from opendisco import clients
    from opendisco.pipeline import Discovery

    async def main() -> Any:
        os_client = clients.async_opensearch(settings)
        motor = clients.motor(settings)
        try:
            return await call(Discovery(settings, os_client, motor[settings.mongo_db]))
        finally:
            await os_client.close()
            motor.close()

    return asyncio.run(main())


def _print_served(recs: Any, title: str, explain: bool) -> None:
    if explain and recs.candidate_set is not None:
        cs = recs.candidate_set
        _print(cs, f"candidate stage ({len(cs.candidates)} candidates)", True, 10)
    console = Console()
    table = Table(title=f"{title}  ({recs.surface}, {recs.template_version})")
    cols = ["#", "id", "title", "score", "sources"] + (["rerank steps"] if explain else [])
    for col in cols:
        table.add_column(col, overflow="fold")
    for n, r in enumerate(recs.items, start=1):
        row = [
            str(n),
            r.id,
            str(r.item.get("title", ""))[:50],
            f"{r.score:.4f}",
            ", ".join(f"{s} {v:.3f}" for s, v in sorted(r.sources.items()))
            + (" [yellow](explore)[/]" if r.explore else ""),
        ]
        if explain:
            steps = []
            for t in r.trace or []:
                move = "" if t["from"] == t["to"] else f" #{_rank(t['from'])}→#{_rank(t['to'])}"
                steps.append(f"{t['step']} {t['delta']:+.3f}{move}")
            row.append("; ".join(steps))
        table.add_row(*row)
    console.print(table)
    if recs.degraded:
        console.print("[red]degraded: some candidate sources failed[/]")
    if explain and recs.explain:
        console.print(f"timings (ms): {recs.explain['timings_ms']}")


def _rank(r: int | None) -> str:
    return "-" if r is None else str(r + 1)


@click.command("recommend")
@click.argument("user_id")
@click.option(
    "--surface",
    type=click.Choice(SURFACES),
    default=None,
    help="Default: for_you with a user vector, else cold_start.",
)
@click.option("-k", "--k", "k", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--query", "query_text", default=None, help="Query text (search surface).")
@click.option("--explain", is_flag=True, help="Rendered queries and per-component scores.")
@click.option("--candidates", is_flag=True, help="Candidate stage only (no rerank).")
@pass_settings
def recommend_cmd(
    settings: Settings,
    user_id: str,
    surface: str | None,
    k: int,
    query_text: str | None,
    explain: bool,
    candidates: bool,
) -> None:
    """Recommendations for USER (final served order), with scores and sources."""
    from opendisco.queries import request_for_user

    if not candidates:
        if query_text is not None or surface == "search":
            if not query_text:
                raise click.UsageError("--surface search needs --query")
            recs = _served(settings, lambda d: d.search(query_text, user_id, k, explain))
        elif surface == "similar":
            raise click.UsageError("use `opendisco similar ITEM` for the similar surface")
        else:
            recs = _served(
                settings, lambda d: d.recommend(user_id, surface or "for_you", k, (), explain)
            )
        _print_served(recs, f"for {user_id}", explain)
        return

    user, state = _load_user(settings, user_id)
    if user is None and state is None:
        click.echo(f"note: no users/user_state document for {user_id!r}: cold start", err=True)
    if query_text is not None and surface is None:
        surface = "search"
    req = request_for_user(
        user, state, surface=surface, k=k, query_text=query_text, explain=explain
    )
    cs = _run(settings, req)
    _print(cs, f"{req.surface} for {user_id}", explain, k)


@click.command("similar")
@click.argument("item_id")
@click.option("--user", "user_id", default=None, help="Apply this user's exclusions/eligibility.")
@click.option("-k", "--k", "k", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--explain", is_flag=True, help="Rendered queries and per-component scores.")
@click.option("--candidates", is_flag=True, help="Candidate stage only (no rerank).")
@pass_settings
def similar_cmd(
    settings: Settings,
    item_id: str,
    user_id: str | None,
    k: int,
    explain: bool,
    candidates: bool,
) -> None:
    """Items like ITEM (k-NN on its vectors + more_like_this), with scores and sources."""
    from opendisco.queries import CandidateRequest, request_for_user

    if not candidates:
        recs = _served(settings, lambda d: d.similar(item_id, k, user_id, explain))
        _print_served(recs, f"similar to {item_id}", explain)
        return

    if user_id:
        user, state = _load_user(settings, user_id)
        req = request_for_user(
            user, state, surface="similar", k=k, item_id=item_id, explain=explain
        )
        req.user_vector = req.behaviour_vector = None  # the anchor's vectors are used
    else:
        req = CandidateRequest(surface="similar", k=k, item_id=item_id, explain=explain)
    cs = _run(settings, req)
    _print(cs, f"similar to {item_id}", explain, k)


def register(cli: click.Group) -> None:
    cli.add_command(recommend_cmd)
    cli.add_command(similar_cmd)
