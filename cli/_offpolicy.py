"""``opendisco eval offpolicy MODEL``: a candidate ranking model's value from the explored
lists of the served-list log (``opendisco.eval._offpolicy``: IPS, SNIPS, doubly robust)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from opendisco import clients
from opendisco._settings import Settings
from opendisco.eval._offpolicy import estimate, slate_logs
from opendisco.rerank import LabelPolicy, LinearScorer, load_ltr_inputs
from opendisco.serving import Artifacts, load_model

from ._base import pass_settings
from ._train import when

__all__ = ["offpolicy_cmd"]


@click.command("offpolicy")
@click.argument("model", metavar="MODEL")
@click.option("--since", default=None, help="Lists served since (ISO time or N[d|h] ago).")
@click.option("--until", default=None, help="Lists served before (ISO time or N[d|h] ago).")
@click.option("--labels", default=None, help="Gains over the defaults, e.g. 'like=2,match=4'.")
@click.option("--window-hours", default=168.0, show_default=True, type=click.FloatRange(0.01))
@click.option("--k", type=click.IntRange(1, 500), help="Slots valued (default: every list's).")
@click.option(
    "--weights",
    type=click.Choice(["uniform", "dcg"]),
    default="uniform",
    show_default=True,
    help="Value = positive outcomes over the k slots, or their DCG.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_settings
def offpolicy_cmd(
    settings: Settings,
    model: str,
    since: str | None,
    until: str | None,
    labels: str | None,
    window_hours: float,
    k: int | None,
    weights: str,
    as_json: bool,
) -> None:
    """Estimate MODEL's value from the explored lists of the served-list log (IPS, SNIPS,
    doubly robust; 95% intervals). MODEL is a model-v<N>.txt or `linear` (the served linear
    scorer); the logging policy's own value is printed beside them.
    """
    if model == "linear":
        scorer = LinearScorer(Artifacts.from_settings(settings).rerank)
    else:
        if not Path(model).is_file():
            raise click.BadParameter(f"{model!r}: not a model file (or `linear`)")
        scorer = load_model(Path(model))[0]
    try:
        policy = LabelPolicy.parse(labels, window_hours=window_hours)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--labels") from exc

    async def read() -> tuple[list[Any], list[Any]]:
        mc = clients.mongo_async(settings)
        try:
            return await load_ltr_inputs(
                mc[settings.mongo_db], policy, since=when(since), until=when(until)
            )
        finally:
            await mc.close()

    lists, events = asyncio.run(read())
    logs = slate_logs(lists, events, policy, k=k)
    if len(logs) == 0:
        raise click.UsageError(
            f"no explored list among {len(lists)} logged lists (explore_rate > 0 logs them)"
        )
    result = estimate(logs, scorer.score, weights=weights).as_dict()
    result["model"] = model
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"{result['lists']} explored lists, k={result['k']}, value = {weights} sum of positive "
        f"outcomes; logging policy {result['logged_value']:.4f}; target slots without "
        f"support {result['unsupported_slots']:.1%}"
    )
    for name, e in result["estimates"].items():
        click.echo(
            f"{name:>6}: {e['value']:.4f}  (se {e['se']:.4f}, 95% CI "
            f"{e['ci_low']:.4f} .. {e['ci_high']:.4f})"
        )
