"""``opendisco services up|down|status|logs``."""

from __future__ import annotations

from pathlib import Path

import click

from opendisco._settings import Settings
from opendisco.services import services
from opendisco.services._process import stop_pid, tail

from ._base import OpenDiscoGroup, pass_settings

__all__ = ["api_pid_file", "services_cmd"]


def api_pid_file(settings: Settings) -> Path:
    """The demo API's pid file (``demo`` writes it, ``services down`` stops that process)."""
    return settings.state_dir / "run" / "api.pid"


@click.group("services", cls=OpenDiscoGroup)
def services_cmd() -> None:
    """Run OpenSearch (+k-NN) and FerretDB on loopback, provisioned into the cache.

    OPENDISCO_OPENSEARCH_NODES=3 runs a three-node OpenSearch cluster (ports: the URL's port
    + i for HTTP, opensearch_transport_port + i for transport; see docs/operations.md)."""


@services_cmd.command("up")
@pass_settings
def up(settings: Settings) -> None:
    """Provision (first time) and start both servers; wait until healthy. Idempotent: only
    servers (cluster nodes) that are not running are started."""
    for svc in services(settings, echo=lambda m: click.echo(f"  {m}", err=True)):
        click.echo(f"{svc.name}: {svc.up()}")


@services_cmd.command("down")
@pass_settings
def down(settings: Settings) -> None:
    """Stop both servers, every cluster node (and a demo API), SIGTERM then SIGKILL; no
    process is left behind."""

    if stop_pid(api_pid_file(settings), grace=10):
        click.echo("api: stopped")
    for svc in services(settings):
        click.echo(f"{svc.name}: {svc.down()}")


@services_cmd.command("status")
@pass_settings
def status(settings: Settings) -> None:
    """Show health and versions, each cluster node and its shards; exit 1 when a server (or
    a node of the local cluster) is not healthy."""
    ok = True
    for svc in services(settings):
        st = svc.status()
        ok &= st.healthy
        mark = click.style("healthy", fg="green") if st.healthy else click.style("DOWN", fg="red")
        click.echo(f"{svc.name:10} {mark}  {st.detail}")
        for line in st.lines:
            click.echo(f"{'':10}   {line}")
    if not ok:
        raise SystemExit(1)


@services_cmd.command("logs")
@click.argument("name", type=click.Choice(["opensearch", "ferretdb"]), required=False)
@click.option("-n", "--lines", default=40, show_default=True)
@pass_settings
def logs(settings: Settings, name: str | None, lines: int) -> None:
    """Print the tail of a server's log."""

    for svc in services(settings):
        if name in (None, svc.name):
            click.echo(f"==> {svc.log_path()} <==")
            click.echo(tail(svc.log_path(), lines))
