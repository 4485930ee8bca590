"""Serving applies the arm: the parts :func:`install` adds to a :class:`Discovery`.

* :class:`ExperimentRegistry` — the running experiments, their cluster snapshots and each
  arm's :class:`~opendisco.serving.Artifacts`, held in memory and re-read from MongoDB every
  ``experiments_refresh_s`` (a failed refresh keeps the last snapshot: requests never wait on
  it after the first load). An experiment whose arm files cannot be loaded (moved, cut
  short) is not served — its members get the served artifacts and log no exposure for it —
  rather than failing every request of its treated members.
* :class:`ExperimentHydrator` — a query hydrator placed right after the member context: the
  viewer's holdout, layers and assignment (:mod:`._assign`), then the arm's overrides as the
  request's ``plan.artifacts`` (template params, rerank config, model: named in the version
  string) or, for a treated viewer of a pair-level design, ``plan.ranking``: a
  :class:`MergedRanking` that ranks the batch under both arms and places every candidate at
  its own arm's rank. ``plan.experiments`` records experiment, arm, design, unit,
  cluster/period and — pair-level — each shown candidate's arm.
* :class:`~._log.ExperimentLog` — the side effect writing both-sided exposure logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from opendisco._exceptions import ConfigError
from opendisco._settings import Settings
from opendisco.rerank import (
    CandidateBatch,
    Features,
    RerankContext,
    Reranker,
    RerankResult,
    merged_config,
)
from opendisco.serving import Artifacts, CandidatePlan, Discovery, load_model, load_template

from ._assign import (
    bucket,
    in_experiment,
    is_held_out,
    region_of,
    served_candidate_arm,
    viewer_assignment,
)
from ._log import ExperimentLog
from ._merge import merge_ranks
from ._model import Arm, DesignKind, Experiment
from ._store import ExperimentStore

__all__ = [
    "ExperimentHydrator",
    "ExperimentRegistry",
    "MergedRanking",
    "arm_artifacts",
    "arm_files",
    "check_arm_files",
    "install",
    "region_of",
]

log = logging.getLogger("opendisco.experiments")


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v)
            if isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
            else v
        )
    return out


def arm_artifacts(
    base: Artifacts, exp: Experiment, arm: Arm, files: Artifacts | None = None
) -> Artifacts:
    """The served artifacts with the arm's overrides on top (``base`` when it has none).
    ``files``: the arm's model and template files loaded already (:func:`arm_files`)."""
    if not arm.overrides:
        return base
    params = _deep_merge(base.params, arm.params)
    config = base.rerank.get_config()
    rerank = merged_config(
        {**config, **arm.rerank, "weights": {**config["weights"], **arm.rerank.get("weights", {})}}
    )
    scorer, model_name = base.scorer, base.model_name
    templates = dict(base.templates)
    if files is not None:
        if arm.model:
            scorer, model_name = files.scorer, files.model_name
        templates.update(files.templates)
    else:
        if arm.model:
            scorer, model_name = load_model(Path(arm.model))
        for path in arm.templates:  # guarded: the hard filter and request parameters stay
            tpl = load_template(Path(path))
            templates[tpl.surface] = tpl
    blob = json.dumps(
        {"params": params, "rerank": rerank.get_config(), "model": model_name},
        sort_keys=True,
        default=str,
    ).encode()
    digest = hashlib.sha256(blob).hexdigest()[:8]
    name = f"{base.params_name}~{exp.id}.{arm.name}@{digest}"
    return replace(
        base,
        params=params,
        rerank=rerank,
        scorer=scorer,
        params_name=name,
        model_name=model_name,
        templates=templates,  # the arm's template versions, else the served ones
    )


def arm_files(exp: Experiment) -> dict[str, Artifacts]:
    """Every arm's model and template files, loaded as serving will (arm name -> artifacts
    holding just them; ``ConfigError`` naming the first that is missing, malformed, trained on
    other features or unguardable)."""
    base = Artifacts()
    return {
        arm.name: arm_artifacts(base, exp, arm) for arm in exp.arms if arm.model or arm.templates
    }


def check_arm_files(exp: Experiment) -> None:
    """An experiment is refused at creation rather than failing its requests (:func:`arm_files`),
    and so is an arm with two templates of one surface, as ``template_files`` is (it served
    the later one: the earlier was never used, silently)."""
    loaded = arm_files(exp)
    for arm in exp.arms:
        if arm.name in loaded and len(loaded[arm.name].templates) < len(arm.templates):
            raise ConfigError(f"arm {arm.name!r}: two templates of one surface in {arm.templates}")


@dataclass(frozen=True)
class Running:
    """One running experiment as served: the experiment and its cluster snapshot."""

    experiment: Experiment
    clusters: Mapping[str, str]
    #: stratified designs: each cluster or region → its stratum's units (the start's snapshot)
    strata: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: each arm's model and template files, loaded when the registry first read it
    files: Mapping[str, Artifacts] = field(default_factory=dict)


@dataclass
class ExperimentRegistry:
    """The running experiments, refreshed from MongoDB in the background."""

    store: ExperimentStore
    base: Artifacts
    holdout: float = 0.0
    holdout_salt: str = "holdout"
    refresh_s: float = 10.0
    running: list[Running] = field(default_factory=list)
    loaded_at: float = -1.0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _artifacts: dict[tuple[tuple[str, str], ...], Artifacts] = field(default_factory=dict)

    def artifacts(self, arms: Sequence[tuple[Experiment, Arm]]) -> Artifacts:
        """The served artifacts with each (experiment, arm)'s overrides stacked in order."""
        key = tuple((e.id, a.name) for e, a in arms)
        art = self._artifacts.get(key)
        if art is None:
            files = {r.experiment.id: r.files for r in self.running}
            art = self.base
            for exp, arm in arms:
                art = arm_artifacts(art, exp, arm, files.get(exp.id, {}).get(arm.name))
            self._artifacts[key] = art
        return art

    async def refresh(self) -> list[Running]:
        exps = await self.store.running()
        old = {r.experiment.id: r for r in self.running}
        out = []
        for exp in exps:
            prev = old.get(exp.id)
            if prev is not None and prev.experiment == exp:
                out.append(prev)
                continue
            try:  # once per change; a file gone later stays served from memory
                files = await asyncio.to_thread(arm_files, exp)  # a model parse: off the loop
            except ConfigError as exc:  # not applied, so none of its exposures is logged
                log.warning("experiment %s is not served: %s", exp.id, exc)
                continue
            clusters = (
                await self.store.clusters(exp.id) if exp.design.kind == DesignKind.cluster else {}
            )
            strata = await self.store.strata(exp.id) if exp.design.strata else {}
            out.append(Running(exp, clusters, strata, files))
        if [r.experiment for r in out] != [r.experiment for r in self.running]:
            self._artifacts = {}
        self.running = out
        self.loaded_at = time.monotonic()
        return out

    async def current(self) -> list[Running]:
        """The snapshot; loads it on first use, refreshes a stale one in the background. A
        store that cannot be read at the first load serves no experiment (fail open to the
        served artifacts) until a refresh succeeds; a failed later refresh keeps serving the
        last snapshot (an experiment stopped meanwhile runs until the store answers). The
        first load is one task the waiting requests share: a request that gives up (its
        deadline) leaves it running. (Awaited in the request, a load longer than the deadline
        — a large cluster snapshot — was cancelled with every request and never completed:
        every answer of the process degraded.)"""
        if self.loaded_at < 0:
            await asyncio.shield(self._refreshing())
            return self.running
        if time.monotonic() - self.loaded_at > self.refresh_s:
            self._refreshing()
        return self.running

    def _refreshing(self) -> asyncio.Task[None]:
        """The refresh running now, or a new one."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh_quietly())
        return self._task

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # keep serving the last snapshot
            log.warning("experiments refresh failed: %r", exc)
            self.loaded_at = time.monotonic()


@dataclass
class MergedRanking:
    """A treated viewer's list in a pair-level design: the batch ranked by both arms, each
    candidate (its owning member) placed at its own arm's rank (:func:`merge_ranks`)."""

    experiment: Experiment
    control: Reranker
    treated: Reranker
    viewer: str
    record: dict[str, Any]
    holdout: float = 0.0
    holdout_salt: str = "holdout"

    def candidate_arm(self, member: str) -> int:
        return served_candidate_arm(self.experiment, member, self.holdout, self.holdout_salt)

    def run(
        self,
        cands: CandidateBatch,
        features: Features,
        ctx: RerankContext | None = None,
        *,
        timed: bool = False,
    ) -> RerankResult:
        members = [
            str(cands.owners[o]) if o >= 0 else cands.ids[i]
            for i, o in enumerate(cands.owner.tolist())
        ]
        mask = np.array([self.candidate_arm(m) == 1 for m in members], dtype=bool)
        rc = self.control.run(cands, features, ctx, timed=timed)
        rt = self.treated.run(cands, features, ctx, timed=timed)
        tie = (
            np.array([bucket(self.experiment.salt, f"tie:{self.viewer}:{m}") for m in members])
            / 1e4
        )
        order = merge_ranks(rc.order, rt.order, mask, tie)
        score = np.full(len(cands), np.nan)
        score[rc.order] = rc.scores
        treated_score = np.full(len(cands), np.nan)
        treated_score[rt.order] = rt.scores
        scores = np.where(mask, treated_score, score)[order]
        names = [a.name for a in self.experiment.arms]
        k = (ctx.k if ctx is not None else None) or len(order)
        self.record["candidates"] = {cands.ids[r]: names[int(mask[r])] for r in order[:k].tolist()}
        self.record["batch"] = {names[0]: int((~mask).sum()), names[1]: int(mask.sum())}
        return RerankResult(order=order, scores=scores, trace=rt.trace, batch=cands)


@dataclass
class ExperimentHydrator:
    """Resolves the viewer's experiments and applies the arms (module docstring)."""

    registry: ExperimentRegistry
    name: str = "experiments"
    _rankers: dict[str, Reranker] = field(default_factory=dict)

    def _reranker(self, artifacts: Artifacts) -> Reranker:
        r = self._rankers.get(artifacts.name)
        if r is None:
            r = self._rankers[artifacts.name] = Reranker(artifacts.rerank, artifacts.scorer)
        return r

    async def hydrate(self, plan: CandidatePlan) -> None:
        viewer = plan.user_id
        if not viewer:
            return
        reg = self.registry
        running = await reg.current()
        if not running:
            return
        if is_held_out(viewer, reg.holdout, reg.holdout_salt):
            plan.experiments.append({"holdout": True})
            return
        now = datetime.now(UTC)
        arms: list[tuple[Experiment, Arm]] = []
        pair: tuple[Experiment, dict[str, Any]] | None = None
        for run in running:
            exp = run.experiment
            if plan.requested_surface not in exp.surfaces or not in_experiment(exp, viewer):
                continue
            region = region_of(plan.user, exp.design.region_field)
            a = viewer_assignment(
                exp, viewer, at=now, clusters=run.clusters, region=region, strata=run.strata
            )
            record = a.to_dict()
            plan.experiments.append(record)
            arm = next(x for x in exp.arms if x.name == a.arm)
            if exp.pair_level:
                if arm is not exp.control:
                    pair = (exp, record)
            elif arm.overrides:
                arms.append((exp, arm))
        if arms:
            plan.artifacts = reg.artifacts(arms)
            plan.ranking = self._reranker(plan.artifacts)
        if pair is not None:
            exp, record = pair
            control = reg.artifacts(arms)
            treated = reg.artifacts([*arms, (exp, exp.arms[1])])
            plan.artifacts = treated
            plan.ranking = MergedRanking(
                exp,
                self._reranker(control),
                self._reranker(treated),
                viewer,
                record,
                reg.holdout,
                reg.holdout_salt,
            )


def install(
    discovery: Discovery, db: Any, settings: Settings, *, log: bool = True
) -> tuple[ExperimentRegistry, ExperimentLog]:
    """Add the experiments' hydrator (after the member context) and, with ``log``, the
    exposure log to a pipeline; returns both (tests refresh and drain them directly)."""
    for hydrator in discovery.parts.query_hydrators:  # installed already: the same parts
        if isinstance(hydrator, ExperimentHydrator):
            found = [e for e in discovery.parts.side_effects if isinstance(e, ExperimentLog)]
            return hydrator.registry, found[0] if found else ExperimentLog(db, hydrator.registry)
    registry = ExperimentRegistry(
        ExperimentStore(db),
        discovery.artifacts,
        holdout=settings.experiments_holdout,
        holdout_salt=settings.experiments_holdout_salt,
        refresh_s=settings.experiments_refresh_s,
    )
    exp_log = ExperimentLog(db, registry)
    parts = discovery.parts
    hydrators = list(parts.query_hydrators)
    at = next((i + 1 for i, h in enumerate(hydrators) if h.name == "member"), 0)
    hydrators.insert(at, ExperimentHydrator(registry))
    # first: it names each shown candidate's arm in the records (control viewers of a
    # two-sided experiment, explored or re-checked pages) before any other side effect reads
    # them — the served-list log encodes a list at once while its store fails (spooled), and
    # appended after it, the spooled list named no candidate's arm or ones never shown
    effects = [exp_log, *parts.side_effects] if log else list(parts.side_effects)
    discovery.parts = replace(parts, query_hydrators=hydrators, side_effects=effects)
    return registry, exp_log
