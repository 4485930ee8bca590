"""Offline comparison of two served artifacts on one user sample, with paired errors.

What the playground runs for "draft vs current": the runner of ``opendisco eval``
(:func:`~opendisco.eval.evaluate` over two :class:`ServedRecommender`), the *same* users
scoring both, so each user's metric difference is one paired observation;
:func:`paired_difference` reports its mean and standard error (and the paired t-test's
p-value, scipy).

The data is a dataset (``synthetic[:N]`` or a MovieLens directory, as ``opendisco eval
--dataset``) replayed into a dedicated namespace (:func:`~opendisco.eval.replay`), scored on
the **validation** stage: choosing a draft is choosing parameters, and parameters are picked on
validation only (the test stage stays for ``opendisco eval``). The replay is done once per
namespace and dataset; a marker document records what was replayed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from opendisco import clients
from opendisco._backend import backend_errors
from opendisco._exceptions import InvalidInput
from opendisco._settings import Settings
from opendisco.serving import Artifacts

from ._compare import sample_users
from ._runner import ACCURACY, EvalReport, PairedDiff, evaluate, paired_difference, paired_values
from ._served import ReplayReport, ServedRecommender, replay
from ._split import time_split
from ._synthetic import resolve_dataset

__all__ = [
    "ArtifactComparison",
    "PairedDiff",
    "compare_artifacts",
    "paired_difference",
    "paired_values",
]

#: the collection (in the evaluation namespace) that records what was replayed there
MARKER_COLLECTION = "eval_replays"
STAGE = "validation"


@dataclass
class ArtifactComparison:
    """The report of both models, the paired differences, and what was replayed."""

    report: EvalReport
    diffs: list[PairedDiff]
    dataset: str
    stage: str
    users: int
    replayed: dict[str, Any] | None = None
    names: dict[str, str] = field(default_factory=dict)  # "current"/"draft" -> artifacts name
    degraded: dict[str, int] = field(default_factory=dict)  # model -> degraded answers

    def as_dict(self) -> dict[str, Any]:
        models = []
        for r in self.report.models:
            models.append(
                {
                    "name": r.name,
                    "artifacts": self.names.get(r.name, ""),
                    "users": r.users,
                    "metrics": r.metrics,
                    "latency": r.latency,
                    "degraded": self.degraded.get(r.name, 0),
                }
            )
        return {
            "dataset": self.dataset,
            "stage": self.stage,
            "k": self.report.k,
            "users": self.users,
            "models": models,
            "diffs": [{**asdict(d), "ci95": list(d.ci95)} for d in self.diffs],
            "replayed": self.replayed,
        }


def _marker_key(spec: str, settings: Settings) -> str:
    return f"{spec}|stage={STAGE}|dim={settings.embedding_dim}|bdim={settings.behaviour_dim}"


def _replayed(settings: Settings) -> dict[str, Any] | None:
    with clients.mongo(settings) as client, backend_errors("reading the replay marker"):
        return client[settings.mongo_db][MARKER_COLLECTION].find_one({"_id": "replay"})


def _mark(settings: Settings, key: str, report: ReplayReport) -> dict[str, Any]:
    doc = {"_id": "replay", "key": key, "at": datetime.now(UTC), "report": asdict(report)}
    with clients.mongo(settings) as client, backend_errors("writing the replay marker"):
        client[settings.mongo_db][MARKER_COLLECTION].replace_one(
            {"_id": "replay"}, doc, upsert=True
        )
    return doc


def compare_artifacts(
    settings: Settings,
    dataset: str,
    current: Artifacts,
    draft: Artifacts,
    *,
    users: int = 50,
    k: int = 10,
    seed: int = 0,
    surface: str = "for_you",
    progress: Callable[[str, int, int], None] | None = None,
) -> ArtifactComparison:
    """Replay ``dataset`` into ``settings``' namespace (once), then score ``current`` and
    ``draft`` on a sample of ``users`` validation users. ``progress(phase, done, total)``."""
    data = resolve_dataset(dataset)
    split = time_split(data)
    stage = split.stage(STAGE)
    evaluable = stage.evaluable
    if len(evaluable) < 2:
        raise InvalidInput(f"{dataset}: fewer than two users to evaluate")
    pick = sample_users(len(evaluable), users, seed)
    uidx = evaluable if pick is None else evaluable[pick]
    key = _marker_key(dataset, settings)
    marker = _replayed(settings)
    replayed = None
    if marker is None or marker.get("key") != key:
        total = {"items": 0, "events": 0}

        def replay_progress(phase: str, n: int) -> None:
            total[phase] = total.get(phase, 0) + n
            if progress:
                progress(f"replay {phase}", total[phase], 0)

        rep = replay(settings, data, split, stage=STAGE, fresh=True, progress=replay_progress)
        replayed = _mark(settings, key, rep)["report"]
    models = {
        "current": ServedRecommender(settings, surface=surface, artifacts=current, concurrency=2),
        "draft": ServedRecommender(settings, surface=surface, artifacts=draft, concurrency=2),
    }
    done = {"n": 0}
    n_total = 2 * len(uidx)

    def scored(name: str, n: int) -> None:
        done["n"] += n
        if progress:
            progress(f"scoring {name}", done["n"], n_total)

    report = evaluate(
        models,
        stage,
        k=k,
        users=uidx,
        batch_size=10,
        dataset=data.name,
        split_info=split.summary(),
        progress=scored,
        per_user=True,
    )
    a, b = report.models
    diffs = [paired_difference(a, b, f"{m}@{k}") for m in ACCURACY]
    return ArtifactComparison(
        report,
        diffs,
        dataset=data.name,
        stage=STAGE,
        users=len(uidx),
        replayed=replayed,
        names={"current": current.name, "draft": draft.name},
        degraded={name: model.degraded for name, model in models.items()},
    )
