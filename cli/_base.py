"""The click group: settings in ``ctx.obj``; the error tree mapped to click errors here."""

from __future__ import annotations

from typing import Any

import click

from opendisco._exceptions import ConfigError, InvalidInput, OpenDiscoError
from opendisco._settings import Settings

__all__ = ["OpenDiscoGroup", "pass_settings"]


class OpenDiscoGroup(click.Group):
    """A group whose commands turn :class:`OpenDiscoError` into :class:`click.ClickException`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, InvalidInput) as exc:
            raise click.UsageError(str(exc)) from exc
        except OpenDiscoError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


pass_settings = click.make_pass_decorator(Settings, ensure=False)
