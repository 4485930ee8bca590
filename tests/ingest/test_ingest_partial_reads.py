"""Reconciliation over an engine answer that is partial, on the real servers behind the fault
proxy (``tests/http_faults.py``, ``rewrite_if``): a page of the index's versions is a 200
whose ``_shards.failed`` is 1 (a shard's search queue full), its hits missing. Read as the
whole index, the documents of that shard were "missing from the index": re-read, embedded
and indexed again, counted as repairs that were none (and a short page ended the scan, every
later document unchecked: their hard deletes never sent that pass). The pass fails instead
(as when the page is refused), and repairs nothing on a view it does not have. A rebuild's
count of its new index answered so is asked again."""

from __future__ import annotations

from typing import Any

import pytest
from ingest_support import FaultyHttpProxy, faulty_engine

from opendisco import SearchBackendError, Settings
from opendisco.ingest import Embedder, Syncer, alias_targets, reindex, verify


def _a_shard_failed(answer: dict[str, Any]) -> dict[str, Any] | None:
    hits = answer.get("hits", {}).get("hits", [])
    if not any(h.get("_id") == "p10" for h in hits):
        return None
    kept = [h for h in hits if not str(h.get("_id", "")).startswith("p1")]
    shards = {"total": 2, "successful": 1, "skipped": 0, "failed": 1}
    return {**answer, "_shards": shards, "hits": {**answer["hits"], "hits": kept}}


async def test_a_reconcile_page_missing_a_shard_fails_the_pass_not_the_documents(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    await reindex(ingest_settings, embedder=embedder)  # its own client
    with FaultyHttpProxy(ingest_settings.opensearch_url) as proxy:
        proxy.rewrite_if = lambda m, path, a: (
            _a_shard_failed(a) if path.endswith("/_search") else None
        )
        faulty = ingest_settings.model_copy(update={"opensearch_url": proxy.url})
        syncer = Syncer(faulty, embedder=embedder)
        try:
            with pytest.raises(SearchBackendError, match="shards failed"):
                await syncer.reconcile(take_all=True)
            assert proxy.rewritten == 1
            proxy.rewrite_if = None
            rec = await syncer.reconcile(take_all=True)  # the whole view: nothing to repair
        finally:
            await syncer.close()
    assert (rec.missing, rec.gone, rec.indexed, rec.deleted) == (0, 0, 0, 0), rec


async def test_verify_on_a_page_missing_a_shard_fails_not_reports_missing(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """Read as the whole index, the failed shard's documents were reported missing (and
    ``verify --repair`` would re-send them): the check fails instead, as on a refused page."""
    await reindex(ingest_settings, embedder=embedder)
    with FaultyHttpProxy(ingest_settings.opensearch_url) as proxy:
        proxy.rewrite_if = lambda m, path, a: (
            _a_shard_failed(a) if path.endswith("/_search") else None
        )
        faulty = ingest_settings.model_copy(update={"opensearch_url": proxy.url})
        with pytest.raises(SearchBackendError, match="shards failed"):
            await verify(faulty)
        assert proxy.rewritten == 1
        proxy.rewrite_if = None
        assert (await verify(faulty)).ok


def _count_short_a_shard(answer: dict[str, Any]) -> dict[str, Any]:
    """A ``_count`` answered by one shard of two: the other's documents not counted."""
    shards = {"total": 2, "successful": 1, "skipped": 0, "failed": 1}
    shards["failures"] = [{"shard": 1, "reason": {"type": "es_rejected_execution_exception"}}]
    return {**answer, "count": answer["count"] // 2, "_shards": shards}


async def test_a_partial_count_after_a_build_is_asked_again_not_taken_as_short(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    """The count of the new index after its build, answered by some shards only, was read as
    the index's: "N documents after build, M acknowledged", the complete build thrown away.
    It is asked again like a storm's 429 now; still partial when the retries are spent, the
    rebuild fails naming the failed shards (and leaves the alias as it was)."""
    counts: list[str] = []

    def counted(method: str, path: str, answer: dict[str, Any]) -> dict[str, Any] | None:
        if not path.endswith("/_count"):
            return None
        counts.append(path)
        return _count_short_a_shard(answer) if len(counts) <= limit else None

    limit = 10**6  # every count partial: the rebuild gives up, naming the cause
    async with faulty_engine(
        ingest_settings, bulk_max_retries=1, bulk_backoff_max=0.1, reindex_retry_seconds=0.5
    ) as (proxy, settings, client):
        proxy.rewrite_if = counted
        with pytest.raises(
            SearchBackendError, match=r"counting .* after the build: .*1 of 2 shards failed"
        ):
            await reindex(settings, client=client, embedder=embedder)
        assert len(counts) > 1  # asked again before giving up
        assert await alias_targets(client, settings.index_alias) == []
        counts.clear()
        limit = 2  # two partial answers, then whole ones: the build is kept
        report = await reindex(settings, client=client, embedder=embedder)
        assert proxy.rewritten > 2 and len(counts) == 3
        assert report.indexed == len(ingest_catalogue)
        assert await alias_targets(client, settings.index_alias) == [report.index]
