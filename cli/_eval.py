"""``opendisco eval`` and ``opendisco tune`` (offline evaluation, see opendisco.eval)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from opendisco._exceptions import InvalidInput
from opendisco._settings import Settings
from opendisco.eval import (
    evaluate,
    learn_ranker,
    resolve_dataset,
    time_split,
    write_similarity,
)
from opendisco.eval._compare import (
    baseline_objective,
    check_namespace,
    fit_baselines,
    namespaced,
    sample_users,
    served_objective,
)
from opendisco.eval._ltr import unlearnable
from opendisco.eval._served import ServedRecommender
from opendisco.eval._served import replay as do_replay
from opendisco.eval._tune import (
    SPACES,
    current_version,
    gain_text,
    html_report,
    now_iso,
    plot_trials,
    run_study,
    served_defaults,
    split_params,
    write_version,
)
from opendisco.ingest import Embedder

from ._base import DefaultGroup, out_dir_ready, pass_settings
from ._offpolicy import offpolicy_cmd

__all__ = ["eval_group", "tune_cmd"]


def _progress(total: int, label: str) -> Any:
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), transient=True
    )
    return progress


def _dataset_spec(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``synthetic``/``synthetic:N`` as given, otherwise an existing directory."""
    if value == "synthetic" or value.startswith("synthetic:"):
        size = value.partition(":")[2]
        if size and not (size.isdigit() and int(size) >= 2):
            raise click.BadParameter(f"{value!r}: expected synthetic:N with N >= 2")
        return value
    if not Path(value).is_dir():
        raise click.BadParameter(f"{value!r} is not a directory (or synthetic[:N])")
    return value


@click.group("eval", cls=DefaultGroup, default="run")
def eval_group() -> None:
    """Offline evaluation: `run` (time-split evaluation against baselines, the default) and
    `offpolicy MODEL` (a candidate model's value from explored served lists)."""


@eval_group.command("run")
@click.option(
    "--dataset",
    "dataset_path",
    required=True,
    callback=_dataset_spec,
    help="MovieLens release directory (ml-latest-small, ml-latest, ml-20m/25m/32m, ml-1m, "
    "ml-10m or ml-100k layout), or synthetic[:N] for the "
    "synthetic marketplace of N members (default 500; opendisco.eval.synthetic_dataset).",
)
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--users", type=click.IntRange(1), help="Score a random sample of N users.")
@click.option("--n-test", default=5, show_default=True, help="Positives held out per user.")
@click.option("--n-val", default=5, show_default=True, help="Validation positives per user.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--served/--no-served",
    default=True,
    show_default=True,
    help="Evaluate the served pipeline (the settings' params file and model) too.",
)
@click.option(
    "--replay/--no-replay",
    default=True,
    show_default=True,
    help="Load items, reindex and replay likes before scoring the served pipeline.",
)
@click.option(
    "--max-likes",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Latest fitting likes replayed per user (0: the whole fitting history).",
)
@click.option(
    "--namespace",
    default=None,
    help="Index alias prefix / Mongo database the served evaluation writes into "
    "(default: eval, evalsyn for the synthetic marketplace).",
)
@click.option(
    "--out",
    "out_dir",
    default=Path("eval-results"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for eval.json and eval.md.",
)
@click.option("--ease-items", default=3000, show_default=True, help="Items modelled by EASE.")
@click.option(
    "--ltr/--no-ltr",
    default=True,
    show_default=True,
    help="Served: also learn a ranker from lists served on the validation stage and score "
    "the test stage with it, beside the item-item table (EASE at the validation λ) its "
    "item_sim columns read (`served+ltr`; skipped when the settings name a model_file).",
)
@pass_settings
def eval_cmd(
    settings: Settings,
    dataset_path: str,
    k: int,
    users: int | None,
    n_test: int,
    n_val: int,
    seed: int,
    served: bool,
    replay: bool,
    max_likes: int,
    namespace: str | None,
    out_dir: Path,
    ease_items: int,
    ltr: bool,
) -> None:
    """Time-split offline evaluation: baselines and the served pipeline, one table.

    Positives are ratings >= 4/5 of the top of the data's scale (4 stars on MovieLens); per
    user the last --n-test positives are the test targets and the --n-val before them the
    validation targets (EASE's lambda is picked there). Writes eval.json and eval.md into
    --out. ``--dataset synthetic[:N]`` evaluates on the synthetic
    marketplace (seeded likes between two-sided-eligible members, a few popular profiles
    attracting most of them): watch coverage and the Gini of impressions there.
    """

    if namespace is not None:
        check_namespace(namespace)
    console = Console(width=160) if not Console().is_terminal else Console()
    data = resolve_dataset(dataset_path)
    if namespace is None:
        namespace = "evalsyn" if data.name.startswith("synthetic") else "eval"
    split = time_split(data, n_test=n_test, n_val=n_val)
    out_dir_ready(out_dir)  # after the dataset's checks: a refused one leaves no folder
    stage = split.stage("test")
    evaluable = stage.evaluable
    pick = sample_users(len(evaluable), users, seed)
    uidx = evaluable if pick is None else evaluable[pick]
    click.echo(
        f"{data.name}: {len(split.users)} users, {len(split.items)} items; "
        f"scoring {len(uidx)} users at K={k}",
        err=True,
    )
    models: dict[str, Any]
    models, info = fit_baselines(split, k=k, max_items=ease_items)
    if served:
        ns_settings = namespaced(settings, namespace)
        model = ServedRecommender(ns_settings)
        # one encoder (and its cache) for the test replay and the learning loop's
        embedder = Embedder(ns_settings)
        if replay:
            rep = do_replay(
                ns_settings,
                data,
                split,
                stage="test",
                users=uidx,
                fresh=True,
                max_likes=max_likes or None,
                embedder=embedder,
            )
            info["replay"] = rep.__dict__
        models["served"] = model
        skip = unlearnable(split) if ltr and settings.model_file is None else None
        if skip:
            info["ltr"] = {"skipped": skip}
            click.echo(f"no ranker learnt: {skip}; the linear pipeline stays served", err=True)
        elif ltr and settings.model_file is None:
            # the learning loop on the validation stage; the test stage scored with its model,
            # as bench/eval.py measures it: the item-item table its item_sim columns read (EASE
            # at the validation λ, the test stage's fitting positives; the loop fits its own on
            # the pre-period) and the itemsim source size the loop picked. Without them both
            # columns were 0 and the source off: the ranker lost its strongest feature.
            info["similarity_rows"] = write_similarity(
                ns_settings, stage, lam=info["ease_lambda"], max_items=ease_items
            )
            path, ltr_report = learn_ranker(
                namespaced(settings, f"{namespace}ltr"),
                data,
                split,
                out_dir / "models",
                k=k,
                embedder=embedder,
                ease_lambda=info["ease_lambda"],
                ease_items=ease_items,
            )
            info["ltr"] = {key: v for key, v in ltr_report.items() if key != "importance"}
            info["ltr_model"] = str(path)
            itemsim = ltr_report["inputs"]["itemsim_candidates"]  # picked on validation
            adoption = ltr_report["adoption"]  # vs the linear order, on validation too
            if adoption["adopted"]:
                models["served+ltr"] = ServedRecommender(
                    ns_settings.model_copy(
                        update={"model_file": path, "itemsim_candidates": itemsim}
                    )
                )
            else:
                click.echo(
                    f"learnt ranker not adopted (not scored): per-member validation NDCG "
                    f"{adoption['mean']} vs the linear order's {adoption['against_mean']}, "
                    f"gain {adoption['gain']:+} (SE {adoption['se']}; needs >= "
                    f"{adoption['min_se']} SE); the linear pipeline stays served",
                    err=True,
                )
        embedder.close()
    progress = _progress(len(uidx) * len(models), "scoring")
    with progress:
        task = progress.add_task("scoring", total=len(uidx) * len(models))
        report = evaluate(
            models,
            stage,
            k=k,
            users=uidx,
            dataset=data.name,
            split_info={**split.summary(), **info},
            progress=lambda name, n: progress.update(task, advance=n, description=name),
        )
    console.print(report.rich_table())
    (out_dir / "eval.json").write_text(report.to_json() + "\n")
    (out_dir / "eval.md").write_text(report.to_markdown())
    click.echo(f"wrote {out_dir / 'eval.json'} and {out_dir / 'eval.md'}", err=True)


@click.command("tune")
@click.option(
    "--dataset",
    "dataset_path",
    required=True,
    callback=_dataset_spec,
    help="MovieLens directory or synthetic[:N].",
)
@click.option(
    "--target",
    type=click.Choice(["served", "ALS", "EASE"]),
    default="served",
    show_default=True,
    help="What to tune: the served pipeline's template/reranker params, or a baseline.",
)
@click.option("--trials", default=20, show_default=True, type=click.IntRange(1))
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--users", type=click.IntRange(1), help="Score a random sample of N users.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--max-likes",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Latest fitting likes replayed per user (0: the whole fitting history).",
)
@click.option("--namespace", default="tune", show_default=True)
@click.option("--replay/--no-replay", default=True, show_default=True)
@click.option(
    "--out",
    "out_dir",
    default=Path("tuning"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Versioned params files (params-v<N>.json), trials PNG and HTML report.",
)
@pass_settings
def tune_cmd(
    settings: Settings,
    dataset_path: str,
    target: str,
    trials: int,
    k: int,
    users: int | None,
    seed: int,
    max_likes: int,
    namespace: str,
    replay: bool,
    out_dir: Path,
) -> None:
    """Optuna search on the validation split; best params written as a new version."""
    check_namespace(namespace)
    version, current = current_version(out_dir_ready(out_dir))  # read before any work
    data = resolve_dataset(dataset_path)
    split = time_split(data)
    stage = split.stage("validation")
    evaluable = stage.evaluable
    if not len(evaluable):
        raise InvalidInput(
            f"{data.name}: no user has validation targets (a user needs {split.n_test + 2} "
            "positives: one to fit on, the test ones, then a validation one): nothing to tune on"
        )
    pick = sample_users(len(evaluable), users, seed)
    uidx = evaluable if pick is None else evaluable[pick]
    if target == "served":
        ns_settings = namespaced(settings, namespace)
        if replay:
            do_replay(
                ns_settings,
                data,
                split,
                stage="validation",
                users=uidx,
                fresh=True,
                max_likes=max_likes or None,
            )
        objective = served_objective(ns_settings, split, k=k, users=uidx)
    else:
        objective = baseline_objective(target, split, k=k, users=uidx)
    start = None
    if current and current.get("target") == target:
        start = current.get("flat_params")
    elif target == "served":
        start = served_defaults()  # trial 0 = what is served today
    metric = f"ndcg@{k}"
    with click.progressbar(length=trials, label=f"tuning {target}", file=None) as bar:
        result = run_study(
            objective,
            SPACES[target],
            trials=trials,
            seed=seed,
            start=start,
            callback=lambda n, v: bar.update(1),
        )

    template, rerank, other = split_params(result.best_params)
    payload = {
        "target": target,
        "created_at": now_iso(),
        "dataset": data.name,
        "metric": metric,
        "stage": "validation",
        "users": len(uidx),  # value, current_value: the picking half's means
        "value": result.best_value,
        "current_value": result.current_value,
        # best − trial 0 per user, on the users held out of the pick
        "gain": None if result.gain is None else {"diff": result.gain.diff, "se": result.gain.se},
        "better_than_current": result.better,
        "based_on": f"params-v{version}.json" if version else "defaults",
        # Discovery(params=..., rerank_config=...) takes these two as they are
        "template_params": {"for_you": template} if template else {},
        "rerank": rerank,
        "model_params": other,
        "flat_params": result.best_params,
    }
    path = write_version(out_dir, payload)
    png = plot_trials(result.values, out_dir / f"{path.stem}-trials.png", metric=metric)
    report = html_report(
        out_dir / f"{path.stem}-report.html",
        result,
        {
            "title": f"{target} on {data.name}",
            "target": target,
            "metric": metric,
            "dataset": data.name,
            "users": len(uidx),
            "seed": seed,
            "current_source": payload["based_on"] if start else "first trial",
            "version_file": path.name,
        },
        png,
    )
    click.echo(
        f"best {metric} = {result.best_value:.4f} (trial {result.best_trial}; "
        f"first trial {result.current_value:.4f}); {gain_text(result)}"
    )
    click.echo(json.dumps(result.best_params, indent=2))
    click.echo(f"wrote {path}, {png}, {report}")


eval_group.add_command(offpolicy_cmd)
