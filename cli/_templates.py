"""``opendisco templates list | show | validate | store | apply``: query templates
(queries/templates/) and index templates."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from opendisco import clients
from opendisco._exceptions import InvalidInput
from opendisco._settings import Settings
from opendisco.ingest import apply_templates, set_replicas
from opendisco.queries import load, render, store_templates, surfaces, validate_templates
from opendisco.signals import exposure_index

from ._base import OpenDiscoGroup, pass_settings

__all__ = ["abbreviate", "templates_cmd"]


def abbreviate(node: Any, max_list: int = 8) -> Any:
    """Long float lists (vectors) shortened for display; everything else unchanged."""
    if isinstance(node, list):
        if len(node) > max_list and all(isinstance(x, float) for x in node):
            return [*node[:3], f"... {len(node)} floats"]
        return [abbreviate(x, max_list) for x in node]
    if isinstance(node, dict):
        return {k: abbreviate(v, max_list) for k, v in node.items()}
    return node


@click.group("templates", cls=OpenDiscoGroup)
def templates_cmd() -> None:
    """Query templates (queries/templates/*.json) and index templates."""


@templates_cmd.command("list")
def templates_list() -> None:
    """Surfaces with their template version and sources (``show --declared`` for params)."""

    table = Table("surface", "version", "sources", "params", "doc")
    for s in surfaces():
        tpl = load(s)
        table.add_row(s, tpl.version, ", ".join(tpl.sources), str(len(tpl.specs)), tpl.doc)
    Console().print(table)


@templates_cmd.command("show")
@click.argument("surface")
@click.option("--params", "params_json", default="{}", help="Parameters as a JSON object.")
@click.option("--declared", is_flag=True, help="Print the parameter declarations instead.")
def templates_show(surface: str, params_json: str, declared: bool) -> None:
    """Render SURFACE with --params (defaults otherwise) and print the request bodies."""

    if declared:
        specs = {n: p.describe() for n, p in load(surface).specs.items()}
        click.echo(json.dumps(specs, indent=2, default=str))
        return
    try:
        params = json.loads(params_json)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInput(f"--params is not JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise InvalidInput("--params must be a JSON object")
    click.echo(json.dumps(abbreviate(render(surface, params)), indent=2))


@templates_cmd.command("validate")
@pass_settings
def templates_validate(settings: Settings) -> None:
    """Render every template (every clause on) and run each source against the cluster."""

    async def main() -> list[Any]:
        client = clients.async_opensearch(settings)
        try:
            return await validate_templates(client, settings)
        finally:
            await client.close()

    checks = asyncio.run(main())
    table = Table("surface", "source", "version", "status", "hits", "took ms", "error")
    for c in checks:
        status = "[green]ok[/]" if c.ok else "[red]FAIL[/]"
        table.add_row(c.surface, c.source, c.version, status, str(c.hits), str(c.took_ms), c.error)
    Console().print(table)
    bad = [c for c in checks if not c.ok]
    if bad:
        raise click.ClickException(f"{len(bad)} of {len(checks)} sources failed")
    click.echo(f"{len(checks)} sources valid against {settings.index_alias}")


@templates_cmd.command("store")
@click.option("--prefix", default="opendisco", show_default=True, help="Script id prefix.")
@pass_settings
def templates_store(settings: Settings, prefix: str) -> None:
    """Store every (surface, source) as an OpenSearch mustache search template (_scripts)."""

    async def main() -> dict[str, str]:
        client = clients.async_opensearch(settings)
        try:
            return await store_templates(client, prefix=prefix)
        finally:
            await client.close()

    for sid, version in asyncio.run(main()).items():
        click.echo(f"{sid}\t{version}")
    click.echo("call with params from opendisco.queries.script_params(surface, params)")


@templates_cmd.command("apply")
@click.option("--dry-run", is_flag=True, help="Only print the diff against the cluster.")
@pass_settings
def templates_apply(settings: Settings, dry_run: bool) -> None:
    """Put index templates that differ from the cluster (idempotent); print the diff. The live
    items and exposure indices get the settings' replica count (index_replicas)."""
    exposures = exposure_index(settings)

    async def main() -> tuple[list[Any], tuple[int, int] | None]:
        client = clients.async_opensearch(settings)
        try:
            plans = await apply_templates(settings, client, dry_run=dry_run)
            changed = await set_replicas(client, exposures, settings.replicas, dry_run=dry_run)
            return plans, changed
        finally:
            await client.close()

    plans, exposure_replicas = asyncio.run(main())
    setting = "would set" if dry_run else "set"
    for plan in plans:
        if plan.changed:
            verb = "would update" if dry_run else "updated"
            if not plan.exists:
                verb = "would create" if dry_run else "created"
            click.echo(f"{plan.name}: {verb}")
            click.echo(plan.diff, nl=False)
        else:
            click.echo(f"{plan.name}: up to date")
        if plan.live_replicas:
            was, now = plan.live_replicas
            click.echo(f"{plan.live_index}: {setting} number_of_replicas {was} -> {now}")
        if plan.live_shards:
            was, now = plan.live_shards
            click.echo(
                f"{plan.live_index}: number_of_shards is {was}, settings say {now}; "
                "run `opendisco reindex` to change it"
            )
        if plan.live_added:
            click.echo(
                f"{plan.live_index}: mapped new fields in place: {', '.join(plan.live_added)}"
            )
        if plan.live_index:
            if plan.live_diff:
                click.echo(
                    f"{plan.live_index} (behind the alias) differs; run `opendisco reindex`:"
                )
                click.echo(plan.live_diff, nl=False)
            else:
                click.echo(f"{plan.live_index} (behind the alias) matches")
    if exposure_replicas:
        was, now = exposure_replicas
        click.echo(f"{exposures}: {setting} number_of_replicas {was} -> {now}")
