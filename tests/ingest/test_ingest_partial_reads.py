"""Reconciliation over an engine answer that is partial, on the real servers behind the fault
proxy (``tests/http_faults.py``, ``rewrite_if``): a page of the index's versions is a 200
whose ``_shards.failed`` is 1 (a shard's search queue full), its hits missing. Read as the
whole index, the documents of that shard were "missing from the index": re-read, embedded
and indexed again, counted as repairs that were none (and a short page ended the scan, every
later document unchecked: their hard deletes never sent that pass). The pass fails instead
(as when the page is refused), and repairs nothing on a view it does not have."""

from __future__ import annotations

from typing import Any

import pytest
from ingest_support import FaultyHttpProxy

from opendisco import SearchBackendError, Settings
from opendisco.ingest import Embedder, Syncer, reindex, verify


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
