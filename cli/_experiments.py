"""``opendisco experiments create FILE | start ID | stop ID | list | report ID``.

``create`` reads an experiment from a JSON or TOML file (see
``opendisco.experiments.Experiment``); ``start`` allocates its layer range (and snapshots
clusters for the cluster design); ``report`` reads the served exposure logs and the events,
prints the readout (or says it is blocked by a sample-ratio mismatch) and writes
``report.json``, ``report.html`` and ``effects.png`` under ``--out``.
"""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from opendisco import clients
from opendisco._exceptions import ConfigError, InvalidInput, validation_problems
from opendisco._settings import Settings
from opendisco.experiments import Experiment, analyze
from opendisco.experiments._report import both_sides, collect, write_report
from opendisco.experiments._serving import check_arm_files
from opendisco.experiments._store import ExperimentStore

from ._base import out_dir_ready, pass_settings

__all__ = ["experiments_cmd"]

T = TypeVar("T")
#: what numpy's generators take (non-negative) and a stored integer holds (8 bytes)
MAX_SEED = 2**63 - 1


def _run(settings: Settings, call: Callable[[Any], Awaitable[T]]) -> T:
    async def main() -> T:
        mongo = clients.mongo_async(settings)
        try:
            return await call(mongo[settings.mongo_db])
        finally:
            await mongo.close()

    return asyncio.run(main())


def _load(path: Path) -> Experiment:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"{path}: {exc}") from exc
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{path}: {validation_problems(exc, 'experiment')}") from exc
    try:
        check_arm_files(exp)
    except ConfigError as exc:
        raise InvalidInput(f"{path}: {exc}") from exc
    # stored as found here: a relative path would be read from the server's working directory
    arms = [
        arm.model_copy(
            update={
                "model": os.path.abspath(arm.model) if arm.model else None,
                "templates": [os.path.abspath(t) for t in arm.templates],
            }
        )
        for arm in exp.arms
    ]
    return exp.model_copy(update={"arms": arms})


def _seed(text: str) -> Callable[[T], T]:
    """A ``--seed`` option: a number numpy's generators take and a stored integer holds."""
    return click.option(
        "--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED), help=text
    )


def _summary(exp: Experiment) -> str:
    arms = ", ".join(a.name for a in exp.arms)
    rng = "" if exp.offset is None else f" buckets {exp.offset}..{exp.offset + exp.width - 1}"
    return (
        f"{exp.id} [{exp.status.value}] {exp.design.kind.value} layer {exp.layer} "
        f"traffic {exp.traffic:.0%}{rng} arms {arms}"
    )


@click.group("experiments")
def experiments_cmd() -> None:
    """Online experiments: define, start, stop, list and read out."""


@experiments_cmd.command("create")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_settings
def create_cmd(settings: Settings, file: Path) -> None:
    """Store the experiment FILE (JSON or TOML) as a draft."""
    exp = _load(file)
    exp = _run(settings, lambda db: ExperimentStore(db).create(exp))
    click.echo(f"created {_summary(exp)}")


@experiments_cmd.command("start")
@click.argument("exp_id")
@_seed("Louvain seed (cluster design).")
@pass_settings
def start_cmd(settings: Settings, exp_id: str, seed: int) -> None:
    """Start a draft: allocate its layer range (snapshot clusters for the cluster design)."""
    exp = _run(settings, lambda db: ExperimentStore(db).start(exp_id, seed=seed))
    click.echo(f"started {_summary(exp)}")


@experiments_cmd.command("stop")
@click.argument("exp_id")
@pass_settings
def stop_cmd(settings: Settings, exp_id: str) -> None:
    """Stop a running experiment (its members return to the served artifacts)."""
    exp = _run(settings, lambda db: ExperimentStore(db).stop(exp_id))
    click.echo(
        f"stopped {_summary(exp) if exp else exp_id + ' (in a form this version cannot read)'}"
    )


@experiments_cmd.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the documents as JSON.")
@pass_settings
def list_cmd(settings: Settings, as_json: bool) -> None:
    """Every experiment with its state, layer range and arms (one stored in a form this
    version cannot read: its id and why, on stderr)."""

    async def call(db: Any) -> tuple[list[Experiment], dict[str, str]]:
        store = ExperimentStore(db)
        return await store.list(), store.unreadable

    exps, unreadable = _run(settings, call)
    for problem in unreadable.values():
        click.echo(f"unreadable: {problem}", err=True)
    if as_json:
        click.echo(json.dumps([e.model_dump(mode="json") for e in exps], indent=2))
        return
    for exp in exps:
        click.echo(_summary(exp))


@experiments_cmd.command("report")
@click.argument("exp_id")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for report.json/html and effects.png [reports/experiments/ID].",
)
@click.option(
    "--bootstrap",
    default=500,
    show_default=True,
    type=click.IntRange(10, 100_000),
    help="Two-sided bootstrap draws.",
)
@_seed("Bootstrap seed (two-sided design).")
@pass_settings
def report_cmd(
    settings: Settings, exp_id: str, out_dir: Path | None, bootstrap: int, seed: int
) -> None:
    """Read out EXP_ID: the SRM gate, then every pre-registered metric by the design's
    estimator, both sides' outcomes; writes the HTML/PNG report."""
    out_dir = out_dir or Path("reports") / "experiments" / exp_id

    async def call(db: Any) -> tuple[Experiment, Any, Any, dict[str, Path], int]:
        exp = await ExperimentStore(db).get(exp_id)
        out_dir_ready(out_dir)  # before the work (NotADirectoryError after it before)
        got = await collect(
            db,
            exp,
            holdout=settings.experiments_holdout,
            holdout_salt=settings.experiments_holdout_salt,
        )
        if got.rows.viewer.shape[0] == 0:
            raise InvalidInput(f"experiment {exp_id!r} has no logged exposures yet")
        weights = [a.weight for a in exp.arms]
        readout = analyze(
            exp.design,
            [a.name for a in exp.arms],
            weights,
            got.rows,
            metrics=exp.metrics,
            assigned=got.assigned,
            covariates=got.covariates,
            bootstrap=bootstrap,
            seed=seed,
        )
        sides = both_sides(exp, got.rows)
        paths = await write_report(db, exp, readout, sides, out_dir)
        return exp, readout, sides, paths, got.foreign

    exp, readout, sides, paths, foreign = _run(settings, call)
    console = Console(width=max(Console().width, 150))
    click.echo(_summary(exp))
    for check in readout.srm:
        click.echo(f"SRM {check.name}: counts {list(check.counts)} p={check.p:.3g}")
    if readout.blocked:
        console.print(
            "[bold red]BLOCKED: sample-ratio mismatch; the estimates below are not a readout[/]"
        )
    table = Table(title=f"{exp.id}: {readout.design} design")
    for col in (
        "metric",
        "arm",
        "control",
        "treatment",
        "effect",
        "relative",
        "95% CI",
        "p",
        "estimator",
    ):
        table.add_column(col)
    for metric, arm, e in readout.estimates:
        table.add_row(
            metric,
            arm,
            f"{e.control:.3f}",
            f"{e.treatment:.3f}",
            f"{e.effect:+.3f}",
            f"{e.relative:+.1%}",
            f"[{e.ci_low:+.3f}, {e.ci_high:+.3f}]" if not e.note else "none",
            f"{e.p:.3g}" if not e.note else "",
            e.estimator,
        )
    console.print(table)
    for metric, arm, e in readout.estimates:
        if e.note:
            click.echo(f"{metric} {arm}: {e.note}")
    if foreign:
        click.echo(f"left out: {foreign} shown items logged under arms the experiment lacks")
    for side in ("viewer", "candidate"):
        t = Table(title=f"{side} side")
        for col in sides[side][0]:
            t.add_column(col)
        for row in sides[side]:
            t.add_row(*(str(v) for v in row.values()))
        console.print(t)
    console.print(f"report: {paths['html']} ({paths['png'].name}, {paths['json'].name})")
