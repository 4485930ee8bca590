"""``opendisco serve`` and ``opendisco apikeys create|revoke|list``."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from opendisco import clients
from opendisco._backend import backend_errors
from opendisco._exceptions import ConfigError
from opendisco._settings import Settings
from opendisco.api import (
    MULTIPROC_ENV,
    SETTINGS_ENV,
    create_app,
    create_key,
    list_keys,
    revoke_key,
    uvicorn_options,
)
from opendisco.serving import Artifacts

from ._base import OpenDiscoGroup, pass_settings
from ._workers import watched_workers

__all__ = ["apikeys_cmd", "serve_cmd"]


@click.command("serve")
@click.option("--host", default=None, help="Bind address (default: settings.api_host).")
@click.option("--port", type=int, default=None, help="Port (default: settings.api_port).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="uvicorn worker processes (default: settings.api_workers). Rate limits, the cursor "
    "secret and /metrics are shared between them.",
)
@click.option("--log-level", default="info", show_default=True)
@pass_settings
def serve_cmd(
    settings: Settings, host: str | None, port: int | None, workers: int | None, log_level: str
) -> None:
    """Serve the discovery API with uvicorn (OpenAPI at /docs and /openapi.json)."""
    import uvicorn

    # the served artifacts (params, template and model files) checked before any worker
    # starts: a broken one is a one-line error here, not a traceback in each worker's startup
    Artifacts.from_settings(settings)

    settings = settings.model_copy(
        update={
            "api_host": host or settings.api_host,
            "api_port": port or settings.api_port,
            "api_workers": workers or settings.api_workers,
        }
    )
    opts = {
        "host": settings.api_host,
        "port": settings.api_port,
        "log_level": log_level,
        "access_log": False,
        **uvicorn_options(),  # request heads bounded, the stop's grace for requests in flight
    }
    if settings.api_workers == 1:
        uvicorn.run(create_app(settings), **opts)
        return
    with (
        _multiprocess_metrics(settings),
        _pinned_artifacts(settings) as settings,
        watched_workers(),
    ):
        Artifacts.from_settings(settings)  # the copies every worker loads, as checked
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        uvicorn.run(
            "opendisco.api:app_from_env",
            factory=True,
            workers=settings.api_workers,
            timeout_worker_healthcheck=settings.api_worker_healthcheck_s,
            **opts,
        )


def _run_dir(root: Path) -> Path:
    """A fresh ``serve-<pid>-*`` directory of this run under ``root``; directories left there by
    servers that died without stopping (a pid no longer running) are removed first."""
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("serve-*"):
        if not _running(int(old.name.split("-")[1])):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"serve-{os.getpid()}-", dir=root))


@contextlib.contextmanager
def _multiprocess_metrics(settings: Settings) -> Iterator[None]:
    """A fresh prometheus-client multiprocess directory for this run (the workers inherit it
    through the environment; removed when the server stops)."""
    path = _run_dir(settings.state_dir / "api-metrics")
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _pinned_artifacts(settings: Settings) -> Iterator[Settings]:
    """``settings`` with ``model_file``, ``params_file`` and ``template_files`` copies of them
    made now, for this run's workers (removed when the server stops). uvicorn replaces a dead
    worker with a new process that loads them again: from the served paths it loaded what
    had been written there since (two workers, two models), or a file cut short or of other
    features, whose failed start made uvicorn stop the whole server. From the copies every
    worker serves the bytes checked at start, under the same file names (the same version
    string); new files are served by a restart. The playground still promotes beside the
    served params file."""
    files = [settings.model_file, settings.params_file, *settings.template_files]
    if all(f is None for f in files):
        yield settings
        return
    path = _run_dir(settings.state_dir / "api-artifacts")
    try:

        def pin(src: Path) -> Path:
            copy = Path(tempfile.mkdtemp(dir=path)) / src.name  # names may repeat
            try:
                copy.write_bytes(src.read_bytes())
            except OSError as exc:
                raise ConfigError(f"served file {src}: {exc}") from exc
            return copy

        update: dict[str, Any] = {"template_files": [pin(f) for f in settings.template_files]}
        if settings.model_file is not None:
            update["model_file"] = pin(settings.model_file)
        if settings.params_file is not None:
            update["params_file"] = pin(settings.params_file)
            update["playground_dir"] = settings.playground_dir or settings.params_file.parent
        yield settings.model_copy(update=update)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


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
