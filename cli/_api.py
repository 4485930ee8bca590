"""``opendisco serve`` and ``opendisco apikeys create|revoke|list``."""

from __future__ import annotations

import click

from opendisco import clients
from opendisco._backend import backend_errors
from opendisco._settings import Settings
from opendisco.api import create_app, create_key, list_keys, revoke_key

from ._base import OpenDiscoGroup, pass_settings

__all__ = ["apikeys_cmd", "serve_cmd"]


@click.command("serve")
@click.option("--host", default=None, help="Bind address (default: settings.api_host).")
@click.option("--port", type=int, default=None, help="Port (default: settings.api_port).")
@click.option("--log-level", default="info", show_default=True)
@pass_settings
def serve_cmd(settings: Settings, host: str | None, port: int | None, log_level: str) -> None:
    """Serve the discovery API with uvicorn (OpenAPI at /docs and /openapi.json)."""
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level=log_level,
        access_log=False,
    )


@click.group("apikeys", cls=OpenDiscoGroup)
def apikeys_cmd() -> None:
    """API keys (stored hashed in MongoDB `api_keys`; scopes read, write, admin)."""


def _db(settings: Settings):  # type: ignore[no-untyped-def]
    return clients.mongo(settings)[settings.mongo_db]


@apikeys_cmd.command("create")
@click.option("--name", required=True, help="Who the key is for.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(["read", "write", "admin"]),
    default=("read",),
    show_default=True,
    help="Repeat for several scopes.",
)
@click.option("--rate", type=float, default=None, help="Requests/s (default: api_rate_limit).")
@pass_settings
def create(settings: Settings, name: str, scopes: tuple[str, ...], rate: float | None) -> None:
    """Create a key and print it once (only its salted hash is stored)."""
    with backend_errors("could not store the key"):
        plaintext, doc = create_key(_db(settings), name, scopes, rate)
    click.echo(f"key id: {doc['_id']}  scopes: {','.join(doc['scopes'])}", err=True)
    click.echo("store this key now; it cannot be shown again:", err=True)
    click.echo(plaintext)


@apikeys_cmd.command("revoke")
@click.argument("key_id")
@pass_settings
def revoke(settings: Settings, key_id: str) -> None:
    """Revoke a key by its id (the part after ``odk_``)."""

    if not revoke_key(_db(settings), key_id):
        raise click.ClickException(f"no active key with id {key_id}")
    click.echo(f"revoked {key_id}")


@apikeys_cmd.command("list")
@pass_settings
def list_cmd(settings: Settings) -> None:
    """List keys (id, name, scopes, state); secrets are never shown."""

    for doc in list_keys(_db(settings)):
        state = "revoked" if doc.get("revoked") else "active"
        rate = doc.get("rate_limit") or settings.api_rate_limit
        click.echo(
            f"{doc['_id']}  {state:7}  {','.join(doc.get('scopes', [])):16}  "
            f"{rate:g}/s  {doc.get('name', '')}"
        )
