"""``opendisco`` console script: one group, settings in ``ctx.obj``."""

from __future__ import annotations

import click

from opendisco import __version__
from opendisco._settings import load_settings

from ._base import OpenDiscoGroup
from ._services import services_cmd

__all__ = ["cli", "main"]


@click.group(cls=OpenDiscoGroup)
@click.version_option(__version__, prog_name="opendisco")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """opendisco: discovery (recommendations) composed inside OpenSearch, reranked in Python."""
    if ctx.obj is None:
        ctx.obj = load_settings()


cli.add_command(services_cmd)

for _name in (
    "_settings_cmd",
    "_templates",
    "_ingest",
    "_recommend",
    "_events",
    "_api",
    "_eval",
    "_demo",
    "_experiments",
):
    # commands of later layers register themselves when their module is present
    try:
        _mod = __import__(f"opendisco.cli.{_name}", fromlist=["register"])
    except ModuleNotFoundError as _exc:
        if _exc.name != f"opendisco.cli.{_name}":
            raise
        continue
    _mod.register(cli)


def main() -> None:
    cli(prog_name="opendisco")
