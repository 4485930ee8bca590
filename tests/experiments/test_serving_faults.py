"""Experiments never take a request down: a store that cannot be read serves no experiment,
an exposure log that cannot be written drops (and counts) documents."""

from __future__ import annotations

from pymongo import AsyncMongoClient

from opendisco.experiments import ExperimentLog, ExperimentRegistry, ExperimentStore
from opendisco.experiments._serving import ExperimentHydrator
from opendisco.serving import Artifacts, CandidatePlan, Recommendation, Recommendations


def _dead_db() -> object:
    client = AsyncMongoClient("mongodb://127.0.0.1:1/", serverSelectionTimeoutMS=200)
    return client["nowhere"]


async def test_registry_fails_open_when_the_store_is_down() -> None:
    reg = ExperimentRegistry(ExperimentStore(_dead_db()), Artifacts(), refresh_s=60)
    plan = CandidatePlan("for_you", 10, user_id="u1")
    await ExperimentHydrator(reg).hydrate(plan)
    assert plan.experiments == [] and plan.artifacts is None and plan.ranking is None
    assert reg.loaded_at > 0  # the next attempt waits for refresh_s


async def test_exposure_log_drops_and_counts_when_the_store_is_down() -> None:
    log = ExperimentLog(_dead_db())
    plan = CandidatePlan("for_you", 1, user_id="u1")
    recs = Recommendations(
        items=[Recommendation("p1", 1.0, {}, {"owner_id": "u1"})],
        degraded=False,
        version="v",
        surface="for_you",
        experiments=[{"experiment": "e", "arm": "control", "design": "user", "unit": "u1"}],
    )
    log.after(plan, recs)
    log.after(plan, recs)
    await log.drain()
    assert log.written == 0 and log.dropped == 2 and not log.queue
