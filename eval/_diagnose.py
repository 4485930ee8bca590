"""Where the served pipeline loses held-out positives: candidate stage or ranking.

:func:`stage_recall` is pure: per user, the candidates' sources, the final top-k and the held-out
targets give the recall of every candidate source, of the fused candidate set (what the reranker
can choose from) and of the final list; ``lost_in_ranking`` is the share of targets the
candidates held that the top-k dropped. :func:`diagnose` collects those inputs through
``Discovery.recommend(explain=True)`` (the served path, its ``candidate_set`` kept).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from opendisco import clients
from opendisco._settings import Settings
from opendisco.serving import Artifacts, Discovery

from ._split import Stage

__all__ = ["UserTrace", "diagnose", "stage_recall"]

#: one user's candidate stage: {candidate id: sources that proposed it}, final ids, targets
UserTrace = tuple[Mapping[str, Collection[str]], Sequence[str], Collection[str]]


def stage_recall(traces: Sequence[UserTrace], k: int) -> dict[str, Any]:
    """Mean recall of held-out targets per candidate source, in the candidate set and in the
    final top-``k`` (users without targets are skipped)."""
    per_source: dict[str, float] = {}
    cand = final = lost = 0.0
    users = 0
    for sources_of, top, targets in traces:
        tgt = set(targets)
        if not tgt:
            continue
        users += 1
        n = len(tgt)
        names = {s for srcs in sources_of.values() for s in srcs}
        for name in names | set(per_source):
            hit = sum(1 for t in tgt if name in sources_of.get(t, ()))
            per_source[name] = per_source.get(name, 0.0) + hit / n
        in_cand = tgt & set(sources_of)
        in_top = tgt & set(top[:k])
        cand += len(in_cand) / n
        final += len(in_top) / n
        lost += (len(in_cand - in_top) / len(in_cand)) if in_cand else 0.0
    if not users:
        return {"users": 0}
    return {
        "users": users,
        "k": k,
        "source_recall": {s: round(v / users, 4) for s, v in sorted(per_source.items())},
        "candidate_recall": round(cand / users, 4),
        f"recall@{k}": round(final / users, 4),
        "lost_in_ranking": round(lost / users, 4),
    }


def diagnose(
    settings: Settings,
    stage: Stage,
    users: Sequence[int],
    *,
    k: int = 10,
    params: Mapping[str, Any] | None = None,
    rerank: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`stage_recall` of the served pipeline for ``users`` (indices into ``stage``)."""
    return asyncio.run(_collect(settings, stage, users, k, params, rerank))


async def _collect(
    settings: Settings,
    stage: Stage,
    users: Sequence[int],
    k: int,
    params: Mapping[str, Any] | None,
    rerank: Mapping[str, Any] | None,
) -> dict[str, Any]:
    mongo = clients.mongo_async(settings)
    os_client = clients.async_opensearch(settings)
    traces: list[UserTrace] = []
    try:
        artifacts = Artifacts.from_settings(settings, params=params, rerank=rerank)
        discovery = Discovery(settings, os_client, mongo[settings.mongo_db], artifacts=artifacts)
        for u in users:
            exclude = tuple(stage.items[i] for i in stage.history[u])
            recs = await discovery.recommend(stage.users[u], k=k, exclude=exclude, explain=True)
            cs = recs.candidate_set
            sources_of = {c.id: tuple(c.sources) for c in (cs.candidates if cs else [])}
            traces.append((sources_of, recs.ids, [stage.items[i] for i in stage.targets[u]]))
    finally:
        await mongo.close()
        await os_client.close()
    return stage_recall(traces, k)
