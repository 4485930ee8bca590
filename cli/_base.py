"""The click group: settings in ``ctx.obj``; the error tree mapped to click errors here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from opendisco._exceptions import ConfigError, InvalidInput, OpenDiscoError
from opendisco._settings import Settings

__all__ = ["DefaultGroup", "OpenDiscoGroup", "out_dir_ready", "pass_settings"]


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


def out_dir_ready(path: Path, option: str = "--out") -> Path:
    """``path`` created now (with its parents), before the work whose results go there: a
    directory that cannot be made (a file on the way, no permission) is a usage error up
    front rather than a traceback once training or tuning has finished."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror or exc}", param_hint=option) from exc
    return path


class DefaultGroup(OpenDiscoGroup):
    """A group that runs ``default`` when the first argument names none of its commands, so a
    command that became a group keeps its old form (``opendisco train --movielens DIR`` is
    ``opendisco train als --movielens DIR``)."""

    def __init__(self, *args: Any, default: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = [self.default, *args]
        return super().parse_args(ctx, args)
