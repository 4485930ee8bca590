"""``opendisco`` console script: one group, settings in ``ctx.obj``, commands loaded lazily.

:data:`COMMANDS` maps each command name to the module attribute that defines it; a command's
module is imported only when that command runs (or ``--help`` lists it), click's ``LazyGroup``
pattern. Domain errors become click errors in :class:`~opendisco.cli._base.OpenDiscoGroup`.
"""

from __future__ import annotations

import importlib

import click

from opendisco import __version__
from opendisco._settings import load_settings

from ._base import OpenDiscoGroup

__all__ = ["COMMANDS", "cli", "main"]

#: command name -> "module:attribute" (relative to this package)
COMMANDS: dict[str, str] = {
    "services": "_services:services_cmd",
    "settings": "_settings_cmd:settings_cmd",
    "templates": "_templates:templates_cmd",
    "reindex": "_ingest:reindex_cmd",
    "sync": "_ingest:sync_cmd",
    "verify": "_ingest:verify_cmd",
    "dead-letters": "_ingest:dead_letters_cmd",
    "sample": "_ingest:sample_cmd",
    "recommend": "_recommend:recommend_cmd",
    "similar": "_recommend:similar_cmd",
    "train": "_train:train_cmd",
    "events": "_events:events_cmd",
    "serve": "_api:serve_cmd",
    "apikeys": "_api:apikeys_cmd",
    "eval": "_eval:eval_group",
    "tune": "_eval:tune_cmd",
    "demo": "_demo:demo_cmd",
    "experiments": "_experiments:experiments_cmd",
}


class LazyGroup(OpenDiscoGroup):
    """A group whose subcommands are imported on first use (``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attr = target.split(":")
        command = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="opendisco")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """opendisco: discovery (recommendations) composed inside OpenSearch, reranked in Python."""
    if ctx.obj is None:
        ctx.obj = load_settings()


def main() -> None:
    cli(prog_name="opendisco")
