"""ExposureStore: counters in their own index, per-item caps, windows, the capped list."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opendisco import Settings
from opendisco._settings import WINDOW_HOURS_MAX, WINDOW_HOURS_MIN
from opendisco.queries import CandidateRequest, generate_candidates
from opendisco.signals import ExposureStore

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


async def test_counts_caps_windows_and_item_docs_untouched(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]], run_id: str
) -> None:
    # a store of its own (separate alias prefix for the counters) over the same items index
    settings = query_settings.model_copy(update={"exposure_default_cap": 5})
    store = ExposureStore(query_os, settings)
    store.index = f"t{run_id}-exp-unit"
    await store.ensure()
    await store.ensure()  # idempotent
    own_cap = next(d for d in query_catalogue if d["kind"] == "movie" and d["available"])
    await query_os.update(
        index=query_settings.index_alias,
        id=own_cap["id"],
        body={"doc": {"exposure_cap": 2}},
        params={"refresh": "true"},
    )
    before = await query_os.get(index=query_settings.index_alias, id=own_cap["id"])
    other = "i0001"
    assert await store.record({own_cap["id"]: 1, other: 4}, now=T0) == []
    capped = await store.record({own_cap["id"]: 1, other: 0}, now=T0 + timedelta(minutes=1))
    assert capped == [own_cap["id"]]  # its own cap (2), not the default (5)
    assert await store.record({other: 1}, now=T0 + timedelta(minutes=2)) == sorted(
        [own_cap["id"], other]
    )
    assert await store.counts([own_cap["id"], other, "unknown"], now=T0) == {
        own_cap["id"]: 2,
        other: 5,
        "unknown": 0,
    }
    # counting never wrote the item document (no re-index of vectors)
    after = await query_os.get(index=query_settings.index_alias, id=own_cap["id"])
    assert after["_version"] == before["_version"] and after["_seq_no"] == before["_seq_no"]
    # the window ends: counts read 0, the capped list empties on sweep, counters restart
    later = T0 + timedelta(hours=settings.exposure_window_hours, minutes=5)
    assert await store.counts([other], now=later) == {other: 0}
    assert await store.sweep(now=later) == []
    assert await store.record({other: 1}, now=later) == []
    assert await store.counts([other], now=later) == {other: 1}
    await query_os.update(
        index=query_settings.index_alias,
        id=own_cap["id"],
        body={"doc": {"exposure_cap": None}},
        params={"refresh": "true"},
    )
    await query_os.indices.delete(index=store.index)


@pytest.mark.parametrize("hours", [WINDOW_HOURS_MIN, WINDOW_HOURS_MAX])
async def test_windows_at_their_bounds_count_cap_and_trend_on_the_engine(
    query_os: Any, query_settings: Settings, run_id: str, hours: float
) -> None:
    # the settings refuse what the engine's millisecond longs cannot hold (tests/test_settings)
    settings = query_settings.model_copy(
        update={
            "exposure_default_cap": 3,
            "exposure_window_hours": hours,
            "trending_window_hours": hours,
            "trending_half_life_hours": hours,
        }
    )
    store = ExposureStore(query_os, settings)
    store.index = f"t{run_id}-exp-bounds-{int(hours)}"
    await store.ensure()
    try:
        assert await store.record({"a": 2}, now=T0) == []
        assert await store.record({"a": 1}, now=T0 + timedelta(milliseconds=500)) == ["a"]
        got = (await store.read(["a"], now=T0 + timedelta(milliseconds=900)))["a"]
        assert got.count == 3 and math.isfinite(got.paced) and got.paced > 0
        later = T0 + timedelta(hours=hours)
        assert await store.counts(["a"], now=later) == {"a": 0}  # the window ended
        assert await store.sweep(now=later) == []
        at = T0 + timedelta(milliseconds=800)
        await store.record_trend([("a", at, 1.0)], now=at)
        await query_os.indices.refresh(index=store.index)
        top = await store.trending(5, now=T0 + timedelta(milliseconds=900))
        assert [i for i, _ in top] == ["a"] and all(math.isfinite(v) for _, v in top)
    finally:
        await query_os.indices.delete(index=store.index)


async def test_default_store_cap_is_enforced_by_the_query(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    req = CandidateRequest(surface="trending", k=5, params={"kinds": ["listing"]}, now=T0)
    top = (await generate_candidates(query_os, query_settings, req)).ids[0]
    store = ExposureStore(query_os, query_settings)
    await store.record({top: query_settings.exposure_default_cap - 1})
    assert top in (await generate_candidates(query_os, query_settings, req)).ids
    await store.record({top: 1})
    assert top not in (await generate_candidates(query_os, query_settings, req)).ids
    assert top in await store.capped()
