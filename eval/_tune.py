"""``tune``: optuna search over template/reranker (or baseline) parameters on validation.

The objective is a metric of the validation stage (default NDCG@10), so the test split stays
untouched by tuning. The best parameters are written as a **new** versioned file
``params-v<N>.json`` in the output directory (``N`` = highest existing + 1, created with
``open(..., "x")`` so nothing is ever overwritten); the current version (highest existing
file, or the defaults) is always evaluated first, as trial 0, so "best" can be compared to
what is shipped. A PNG of the metric over trials and an HTML report sit beside it.

Parameter names: ``template.<name>`` go to the query template (``CandidateRequest.params``),
``rerank.<field>`` / ``rerank.weights.<feature>`` to ``RerankConfig``; baseline targets use
their constructor keywords.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from opendisco._exceptions import InvalidInput
from opendisco._versions import latest_version, write_next_version
from opendisco.queries import load
from opendisco.rerank import RerankConfig

from ._runner import PairedDiff, paired_values

__all__ = [
    "SPACES",
    "Dim",
    "TuneResult",
    "current_version",
    "gain_text",
    "html_report",
    "plot_trials",
    "run_study",
    "served_defaults",
    "split_params",
    "write_version",
]


@dataclass(frozen=True)
class Dim:
    """One searched parameter: a float or int range (``log`` for scale parameters)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def suggest(self, trial: Any, name: str) -> float | int:
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


SPACES: dict[str, dict[str, Dim]] = {
    "served": {
        "template.w_semantic": Dim(0.0, 3.0),
        "template.w_lexical": Dim(0.0, 3.0),
        "template.w_behaviour": Dim(0.0, 3.0),
        "template.w_graph": Dim(0.0, 3.0),
        "template.graph_pop_alpha": Dim(0.0, 2.0),
        "template.w_trending": Dim(0.0, 2.0),
        "template.w_fresh": Dim(0.0, 1.0),
        "template.rrf_k": Dim(5, 200, log=True, integer=True),
        "template.explore_share": Dim(0.0, 0.3),
        "rerank.mmr_lambda": Dim(0.3, 1.0),
        "rerank.exposure_strength": Dim(0.0, 1.0),
        "rerank.max_per_category": Dim(1, 10, integer=True),
        "rerank.weights.content_sim": Dim(0.0, 2.0),
        "rerank.weights.behaviour_sim": Dim(0.0, 2.0),
        # negative: co-engagement counts and the behaviour k-NN already lean to popular items
        "rerank.weights.popularity": Dim(-1.0, 1.0),
        "rerank.weights.quality": Dim(-1.0, 1.0),
        "rerank.weights.graph": Dim(0.0, 1.0),
        "rerank.weights.fused": Dim(0.0, 2.0),
    },
    "ALS": {
        "factors": Dim(16, 128, log=True, integer=True),
        "regularization": Dim(1e-3, 1.0, log=True),
        "alpha": Dim(1.0, 50.0, log=True),
    },
    "EASE": {"lam": Dim(10.0, 5000.0, log=True)},
}


def split_params(flat: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(template params, rerank config, other)`` from flat ``a.b.c`` names."""
    template: dict[str, Any] = {}
    rerank: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith("template."):
            template[key.removeprefix("template.")] = value
        elif key.startswith("rerank.weights."):
            rerank.setdefault("weights", {})[key.removeprefix("rerank.weights.")] = value
        elif key.startswith("rerank."):
            rerank[key.removeprefix("rerank.")] = value
        else:
            other[key] = value
    return template, rerank, other


def current_version(out_dir: Path) -> tuple[int, dict[str, Any] | None]:
    """Highest ``params-v<N>.json`` in ``out_dir`` and its content (0, None when none);
    :class:`InvalidInput` when that file is not a JSON object (``flat_params``, the next
    study's first trial, an object too)."""
    best = latest_version(out_dir, "params", ".json")
    if best == 0:
        return 0, None
    path = out_dir / f"params-v{best}.json"
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON, UTF-8
        raise InvalidInput(f"{path}: not a JSON document: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("flat_params", {}), dict):
        raise InvalidInput(f"{path}: not a params file (a JSON object, flat_params an object)")
    return best, doc


def write_version(out_dir: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as the next ``params-v<N>.json``; never overwrites a file."""

    def write(fh: Any, version: int) -> None:
        json.dump({"version": version, **payload}, fh, indent=2, default=str)
        fh.write("\n")

    return write_next_version(out_dir, "params", ".json", write)


@dataclass
class TuneResult:
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    current_value: float
    values: list[float]
    trials: list[dict[str, Any]]
    #: best − trial 0 per user on the users held out of the pick (objectives that return
    #: per-user values, four users or more), else None
    gain: PairedDiff | None = None

    @property
    def better(self) -> bool:
        """The best beats trial 0 (the current parameters) by at least one paired SE: else
        the difference is noise and the current parameters are as good."""
        g = self.gain
        if g is None:
            return self.best_value > self.current_value
        return g.diff > 0 and (g.se == 0 or g.diff >= g.se)


def served_defaults(surface: str = "for_you") -> dict[str, Any]:
    """The shipped value of every ``SPACES["served"]`` parameter (template specs of
    ``surface`` and ``RerankConfig()``), so tuning's trial 0 is what is served today."""

    specs = load(surface).specs
    config = RerankConfig().get_config()
    out: dict[str, Any] = {}
    for name in SPACES["served"]:
        area, _, key = name.partition(".")
        if area == "template" and key in specs:
            out[name] = specs[key].default
        elif area == "rerank":
            head, _, sub = key.partition(".")
            value = config.get(head)
            value = value.get(sub) if sub and isinstance(value, dict) else value
            if value is not None:
                out[name] = value
    return out


def run_study(
    objective: Callable[[dict[str, Any]], float | Sequence[float]],
    space: Mapping[str, Dim],
    *,
    trials: int,
    seed: int = 0,
    start: Mapping[str, Any] | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> TuneResult:
    """Maximise ``objective(params)`` with optuna's TPE; trial 0 evaluates ``start``.

    An objective may return per-user values (the same users in the same order every trial):
    the study then maximises their mean over a random half of the users (drawn with
    ``seed``) and the result carries the best trial's paired gain over trial 0, with its
    standard error, on the other half — users that played no part in the pick. Measured on
    the users it was picked on, the best of N trials beats trial 0 by the search's noise
    alone (a reshuffle of one set of per-user values "gained" there)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    if start:
        study.enqueue_trial({k: v for k, v in start.items() if k in space})

    per_user: dict[int, np.ndarray] = {}
    held: list[np.ndarray] = []  # the confirming half's mask, drawn at the first values

    def wrapped(trial: Any) -> float:
        params = {name: dim.suggest(trial, name) for name, dim in space.items()}
        out = objective(params)
        if isinstance(out, int | float):
            value = float(out)
        else:
            values = per_user[trial.number] = np.asarray(out, dtype=np.float64)
            if not held:
                held.append(_confirming_half(len(values), seed))
            if len(values) != len(held[0]):
                raise InvalidInput(
                    f"trial {trial.number}: {len(values)} per-user values, the first trial "
                    f"{len(held[0])}: an objective scores the same users every trial"
                )
            pick = values[~held[0]]
            value = float(pick.mean()) if len(pick) else float("nan")
        if callback:
            callback(trial.number, value)
        return value

    study.optimize(wrapped, n_trials=trials)
    done = [t for t in study.trials if t.value is not None]
    gain = None
    if done and held and held[0].any():
        first, best = per_user.get(done[0].number), per_user.get(study.best_trial.number)
        if first is not None and best is not None:
            gain = paired_values(first[held[0]], best[held[0]], "objective")
    return TuneResult(
        best_params=dict(study.best_params),
        best_value=float(study.best_value),
        best_trial=int(study.best_trial.number),
        current_value=float(done[0].value) if done else float("nan"),
        values=[float(t.value) for t in done],
        trials=[{"number": t.number, "value": float(t.value), **t.params} for t in done],
        gain=gain,
    )


def _confirming_half(n: int, seed: int) -> np.ndarray:
    """Pure: the mask of the users held out of a study's pick (half, at random with
    ``seed``); none below four users (a standard error needs two on each side)."""
    mask = np.zeros(n, dtype=bool)
    if n >= 4:
        mask[np.random.default_rng(seed).permutation(n)[: n // 2]] = True
    return mask


def plot_trials(values: list[float], path: Path, *, metric: str) -> Path:
    """PNG: the metric of every trial and the running best (matplotlib Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 3.6), dpi=100)
    xs = list(range(len(values)))
    best = [max(values[: i + 1]) for i in xs]
    ax.plot(xs, values, "o", color="#4c72b0", label="trial")
    ax.plot(xs, best, "-", color="#dd8452", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)

    def cell(v: Any) -> str:
        return f"{v:.5g}" if isinstance(v, float) else html.escape(str(v))

    body = "".join(
        "<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(path: Path, result: TuneResult, info: Mapping[str, Any], png: Path) -> Path:
    """A self-contained HTML page (the PNG is referenced relatively)."""
    template = Template(resources.files("opendisco.eval").joinpath("report.html").read_text())
    page = template.substitute(
        title=html.escape(str(info.get("title", ""))),
        target=html.escape(str(info.get("target", ""))),
        metric=html.escape(str(info.get("metric", ""))),
        dataset=html.escape(str(info.get("dataset", ""))),
        users=info.get("users", ""),
        trials=len(result.values),
        seed=info.get("seed", ""),
        current_source=html.escape(str(info.get("current_source", "defaults"))),
        current_value=f"{result.current_value:.5f}",
        best_value=f"{result.best_value:.5f}",
        gain=html.escape(gain_text(result)),
        best_trial=result.best_trial,
        version_file=html.escape(str(info.get("version_file", ""))),
        png=html.escape(png.name),
        best_table=_table([{"parameter": k, "value": v} for k, v in result.best_params.items()]),
        trials_table=_table(result.trials),
    )
    path.write_text(page, encoding="utf-8")
    return path


def gain_text(result: TuneResult) -> str:
    """The best trial against trial 0 in words: paired gain, SE, and whether it is noise."""
    g = result.gain
    if g is None:
        return "no per-user values: no standard error"
    verdict = (
        "better by at least 1 SE"
        if result.better
        else "within 1 SE of the current parameters: not shown to be better"
    )
    return (
        f"paired gain {g.diff:+.4f} (SE {g.se:.4f}, on {g.n} users held out of the pick): {verdict}"
    )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
