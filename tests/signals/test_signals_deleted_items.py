"""An event stored (claimed) while its item was known, whose call failed part-way, and whose
item is deleted before the retry: the retry completes it, once, instead of rejecting it as
about an unknown item (the check ran before the claim's: the event stayed unapplied for good,
its effects landed in part, its client answered ``rejected``). Found by bench/chaos.py (a 429
storm and a store cut under a writer deleting profiles: a profile's inbound likes and its
liker's likes held a like the API had answered ``rejected``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from http_faults import FaultyHttpProxy
from signals_support import clustered_namespace

from opendisco import SearchBackendError, Settings, clients
from opendisco.signals import EVENTS, EventProcessor, InboundCounter, UserStateStore


@pytest.fixture(scope="module")
def gone_settings(
    settings: Settings, os_client: Any, index_items: Any, clustered_items: list[dict[str, Any]]
) -> Iterator[Settings]:
    wait = {"events_claim_wait_s": 5.0, "events_claim_lease_s": 30.0}
    with clustered_namespace(settings, os_client, index_items, clustered_items, "dl", **wait) as s:
        yield s


async def test_a_retry_completes_an_event_stored_before_its_item_was_deleted(
    gone_settings: Settings, os_client: Any
) -> None:
    s = gone_settings
    member = f"d{uuid.uuid4().hex[:6]}"
    batch = [
        {"id": uuid.uuid4().hex, "type": "impression", "item_id": "alpha3", "user_id": member},
        {"id": uuid.uuid4().hex, "type": "like", "item_id": "prof0", "user_id": member},
    ]
    mongo = clients.mongo_async(s)
    db = mongo[s.mongo_db]
    try:
        with FaultyHttpProxy(s.opensearch_url) as proxy:
            through = s.model_copy(update={"opensearch_url": proxy.url})
            osc = clients.async_opensearch(through)
            try:
                proc = EventProcessor(through, db, osc)
                await proc.ensure()
                proxy.fail_if = lambda method, path: path.rstrip("/").endswith("_bulk")
                with pytest.raises(SearchBackendError):
                    await proc.apply(batch)  # claimed, the engine's counter writes refused
                ids = {"_id": {"$in": [e["id"] for e in batch]}}
                assert await db[EVENTS].count_documents({**ids, "applied": False}) == 2
                # the profile deleted meanwhile: MongoDB keeps it deleted, the engine drops it
                doc = {"_id": "prof0", "kind": "profile", "owner_id": "person0", "deleted": True}
                await db[s.items_collection].insert_one(doc)
                os_client.delete(index=s.index_alias, id="prof0", refresh=True)
                proxy.fail_if = None
                res = await proc.apply(batch)  # the client's retry
            finally:
                await osc.close()
        assert not res.rejected, res
        assert res.recovered + res.accepted + res.duplicates == 2, res
        assert await db[EVENTS].count_documents({**ids, "applied": True}) == 2
        assert (await InboundCounter(db).counts(["prof0"])).get("prof0") == 1
        states = await UserStateStore(db).get_many([member])
        assert states[member].n_likes == 1
    finally:
        await mongo.close()
