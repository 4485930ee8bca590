"""The engine's partial answers to the exposure lookups, on the real engine behind the fault
proxy (``tests/http_faults.py``: ``rewrite_if``, ``reject_item``): a 200 search whose
``_shards.failed`` is not 0 (a shard's search queue full: its hits are missing from the
answer) and an ``_mget`` with one document an error object (a shard's get queue full). Read
as a whole answer, each said an item had no impressions or no cap of its own: the caps of
what is shown were enforced on made-up numbers. Each must fail the lookup instead (a
:class:`SearchBackendError`: what a refused lookup already raises, and its callers handle)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from http_faults import FaultyHttpProxy

from opendisco import SearchBackendError, Settings, clients
from opendisco.queries import CandidateRequest, generate_candidates
from opendisco.signals import ExposureStore, PacingController
from opendisco.signals._exposure_mirror import scan_counters


def _shard_failed(answer: dict[str, Any]) -> dict[str, Any]:
    """``answer`` as the engine gives it when one more shard failed: that shard's hits gone."""
    shards = dict(answer.get("_shards") or {"total": 1, "successful": 1, "failed": 0})
    shards["total"] = int(shards["total"]) + 1
    shards["failed"] = int(shards.get("failed", 0)) + 1
    shards["failures"] = [{"shard": 1, "reason": {"type": "es_rejected_execution_exception"}}]
    return {**answer, "_shards": shards, "hits": {**answer["hits"], "hits": []}}


@pytest.fixture
async def through(
    query_settings: Settings, query_catalogue: list[dict[str, Any]], run_id: str, query_os: Any
) -> AsyncIterator[tuple[FaultyHttpProxy, ExposureStore, str]]:
    """A counters store of its own (default cap 5) through the proxy, and a movie whose own
    cap is 2 (restored after)."""
    own = next(d for d in query_catalogue if d["kind"] == "movie" and d["available"])["id"]
    s = query_settings.model_copy(update={"exposure_default_cap": 5})
    await query_os.update(
        index=s.index_alias, id=own, body={"doc": {"exposure_cap": 2}}, params={"refresh": "true"}
    )
    with FaultyHttpProxy(s.opensearch_url) as proxy:
        client = clients.async_opensearch(s.model_copy(update={"opensearch_url": proxy.url}))
        store = ExposureStore(client, s)
        store.index = f"t{run_id}-exp-partial"
        try:
            await store.ensure()
            yield proxy, store, own
        finally:
            await query_os.indices.delete(index=store.index, ignore_unavailable=True)
            await query_os.update(
                index=s.index_alias,
                id=own,
                body={"doc": {"exposure_cap": None}},
                params={"refresh": "true"},
            )
            await client.close()


async def test_a_caps_lookup_missing_a_shard_fails_the_count_not_the_cap(
    through: tuple[FaultyHttpProxy, ExposureStore, str],
) -> None:
    """The item's own cap (2) is in the shard that failed: read as whole, the default (5)
    applied and 2 impressions left it off the cap list (shown to 3 more members)."""
    proxy, store, own = through
    alias = store.settings.index_alias
    proxy.rewrite_if = lambda m, path, a: _shard_failed(a) if path == f"/{alias}/_search" else None
    with pytest.raises(SearchBackendError, match="shards failed"):
        await store.record({own: 2})
    assert proxy.rewritten == 1
    proxy.rewrite_if = None
    assert await store.counts([own]) == {own: 0}  # nothing written: the caller sends it again
    assert await store.record({own: 2}) == [own]  # its own cap, 2


async def test_counter_reads_missing_a_shard_or_a_document_fail_not_read_zero(
    through: tuple[FaultyHttpProxy, ExposureStore, str],
) -> None:
    """Counters read by ``_mget`` (realtime), by search (doc values) and scanned by the
    process's copy: a document the engine answered with an error, or a failed shard's, is
    not an item never shown."""
    proxy, store, own = through
    await store.record({own: 1, "i0002": 1})
    await store.client.indices.refresh(index=store.index)
    proxy.reject_item = lambda index, doc_id: index == store.index and doc_id == own
    with pytest.raises(SearchBackendError, match="rejected"):
        await store.counts([own, "i0002"])
    proxy.reject_item = None
    proxy.rewrite_if = lambda m, path, a: (
        _shard_failed(a) if path == f"/{store.index}/_search" else None
    )
    with pytest.raises(SearchBackendError, match="shards failed"):
        await store.read([own], realtime=False)
    with pytest.raises(SearchBackendError, match="shards failed"):
        await scan_counters(store, None)
    proxy.rewrite_if = None
    assert (await store.read([own], realtime=False))[own].count == 1
    assert (await store.counts([own, "i0002"])) == {own: 1, "i0002": 1}


async def test_an_msearch_with_failed_partial_and_missing_sub_searches_names_each(
    query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    """One ``_msearch``: its first sub-search an error object (429: its search queue full),
    its second a 200 missing a shard, and the answer one response short. The set keeps every
    hit it got and names each source that is not whole (``errors``: the explain block's
    ``source_errors``): read as whole, the partial and the unanswered sources were silent."""
    vecs = [d["embedding"] for d in query_catalogue if d.get("category") == "jazz"][:10]
    uv = [sum(col) / len(vecs) for col in zip(*vecs, strict=True)]
    req = CandidateRequest(
        surface="for_you", k=40, user_vector=uv, behaviour_vector=uv[:32], interests=["jazz"]
    )

    def degrade(method: str, path: str, answer: dict[str, Any]) -> dict[str, Any] | None:
        if not path.endswith("/_msearch"):
            return None
        _first, second, *rest = answer["responses"]
        rejected = {"error": {"type": "es_rejected_execution_exception"}, "status": 429}
        return {**answer, "responses": [rejected, _shard_failed(second), *rest[:-1]]}

    with FaultyHttpProxy(query_settings.opensearch_url) as proxy:
        s = query_settings.model_copy(update={"opensearch_url": proxy.url})
        client = clients.async_opensearch(s)
        try:
            whole = await generate_candidates(client, s, req)
            names = list(whole.rendered["sources"])
            assert len(names) >= 4 and not whole.errors
            proxy.rewrite_if = degrade
            cs = await generate_candidates(client, s, req)
        finally:
            await client.close()
    assert proxy.rewritten == 1
    assert set(cs.errors) == {names[0], names[1], names[-1]}, cs.errors
    assert "es_rejected_execution_exception" in cs.errors[names[0]]
    assert "shards failed" in cs.errors[names[1]]
    assert "no answer" in cs.errors[names[-1]]
    assert set(cs.source_took) == set(names[1:-1])  # the partial source's hits are kept
    assert cs.candidates


async def test_pacing_measures_nothing_from_a_partial_count_or_sum(
    through: tuple[FaultyHttpProxy, ExposureStore, str], async_db: Any
) -> None:
    """The controller's mean impressions per member: the members counted on the index and
    the impressions summed on the counters. A failed shard's share of either, read as whole,
    moved the budget on numbers of part of the market: the measure fails (the step is
    skipped, :meth:`PacingController.step` keeps the last state)."""
    proxy, store, own = through
    await store.record({own: 3})
    await store.client.indices.refresh(index=store.index)
    ctl = PacingController(store.settings, async_db, store)
    now = datetime.now(UTC)
    _, whole = await ctl.measure(now)

    def fail_shard(path: str, wanted: str, answer: dict[str, Any]) -> dict[str, Any] | None:
        if path != wanted:
            return None
        shards = {"total": 2, "successful": 1, "skipped": 0, "failed": 1}
        return {**answer, "_shards": shards}

    for wanted in (f"/{store.index}/_search", f"/{store.settings.index_alias}/_count"):
        proxy.rewrite_if = lambda m, path, a, w=wanted: fail_shard(path, w, a)
        with pytest.raises(SearchBackendError, match="shards failed"):
            await ctl.measure(now)
    proxy.rewrite_if = None
    assert proxy.rewritten == 2
    assert (await ctl.measure(now))[1] == whole
