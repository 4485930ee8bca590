"""``opendisco recommend USER`` and ``opendisco similar ITEM``: what the API would serve.

By default both go through the served pipeline (``opendisco.serving.Discovery``: candidates
from one ``_msearch``, batched features, rerank), so the table is the final order; with
``--explain`` the candidate stage (rendered queries, per-source RRF shares, OpenSearch score
components) is printed first, then which rerank step moved each served item.
``--candidates`` shows the candidate stage alone of exactly the request the pipeline serves
(``Discovery.plan`` then ``Discovery.candidates``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from opendisco import clients
from opendisco._domain import Surface
from opendisco._settings import Settings
from opendisco.experiments import install as install_experiments
from opendisco.queries import CandidateSet
from opendisco.serving import MAX_K, Discovery, Recommendations

from ._base import pass_settings
from ._templates import abbreviate

__all__ = ["recommend_cmd", "similar_cmd"]


def _print(cs: CandidateSet, title: str, explain: bool, show: int) -> None:
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


def _served(settings: Settings, call: Callable[[Discovery], Awaitable[Any]]) -> Any:
    """``call(discovery)`` on the served pipeline (the params file and model of the settings)."""

    async def main() -> Any:
        os_client = clients.async_opensearch(settings)
        mongo = clients.mongo_async(settings)
        try:
            discovery = Discovery(settings, os_client, mongo[settings.mongo_db])
            # running experiments apply as in the API (not logged: this is an inspection)
            install_experiments(discovery, mongo[settings.mongo_db], settings, log=False)
            return await call(discovery)
        finally:
            await os_client.close()
            await mongo.close()

    return asyncio.run(main())


async def _candidates(discovery: Discovery, surface: str, k: int, **request: Any) -> CandidateSet:
    """The candidate stage alone, of exactly the request the pipeline would serve."""
    return await discovery.candidates(await discovery.plan(surface, k, **request))


async def _recommendations(
    discovery: Discovery, surface: str, k: int, **request: Any
) -> Recommendations:
    return await discovery.run(await discovery.plan(surface, k, **request))


def _print_served(recs: Recommendations, title: str, explain: bool) -> None:
    if explain and recs.candidate_set is not None:
        cs = recs.candidate_set
        _print(cs, f"candidate stage ({len(cs.candidates)} candidates)", True, 10)
    console = Console()
    table = Table(title=f"{title}  ({recs.surface}, {recs.version})")
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
    type=click.Choice([s.value for s in Surface if s != Surface.similar]),
    default=None,
    help="Default: for_you with a user vector, else cold_start.",
)
@click.option("-k", "--k", "k", default=20, show_default=True, type=click.IntRange(1, MAX_K))
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
    if query_text is not None and surface is None:
        surface = Surface.search
    if surface == Surface.search and not query_text:
        raise click.UsageError("--surface search needs --query")
    if surface == Surface.similar:
        raise click.UsageError("use `opendisco similar ITEM` for the similar surface")
    surface = surface or Surface.for_you
    if candidates:
        cs = _served(
            settings,
            lambda d: _candidates(
                d, surface, k, user_id=user_id, query=query_text, explain=explain
            ),
        )
        _print(cs, f"{cs.surface} for {user_id}", explain, k)
        return
    recs = _served(
        settings,
        lambda d: _recommendations(
            d, surface, k, user_id=user_id, query=query_text, explain=explain
        ),
    )
    _print_served(recs, f"for {user_id}", explain)


@click.command("similar")
@click.argument("item_id")
@click.option("--user", "user_id", default=None, help="Apply this user's exclusions/eligibility.")
@click.option("-k", "--k", "k", default=20, show_default=True, type=click.IntRange(1, MAX_K))
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
    if candidates:
        cs = _served(
            settings,
            lambda d: _candidates(
                d, Surface.similar, k, user_id=user_id, item_id=item_id, explain=explain
            ),
        )
        _print(cs, f"similar to {item_id}", explain, k)
        return
    recs = _served(
        settings,
        lambda d: _recommendations(
            d, Surface.similar, k, user_id=user_id, item_id=item_id, explain=explain
        ),
    )
    _print_served(recs, f"similar to {item_id}", explain)
