"""End to end: events → `opendisco train` → our behaviour collection → sync → OpenSearch, no
re-encoding, and the app's items untouched."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from opendisco import Settings, clients
from opendisco._stored import read_vector
from opendisco.cli.main import cli
from opendisco.ingest import Embedder, generate_marketplace, reindex, sync_once, write_sample
from opendisco.signals import EventProcessor


@pytest.fixture
def als_settings(settings: Settings, os_client: Any) -> Any:
    s = settings.model_copy(
        update={"index_alias": f"{settings.index_alias}als", "mongo_db": f"{settings.mongo_db}als"}
    )
    yield s
    os_client.indices.delete(
        index=f"{s.index_alias}*", ignore_unavailable=True, expand_wildcards="all"
    )
    mc = clients.mongo(s)
    mc.drop_database(s.mongo_db)
    mc.close()


def test_train_vectors_reach_opensearch_through_sync_without_reencoding(
    als_settings: Settings, model: Any
) -> None:
    s = als_settings
    items, users = generate_marketplace(40, seed=3)
    write_sample(s, items, users)
    ids = [it["_id"] for it in items]

    async def setup() -> None:
        osc, mc = clients.async_opensearch(s), clients.mongo_async(s)
        try:
            await reindex(s, client=osc, db=mc[s.mongo_db], embedder=Embedder(s, model=model))
            proc = EventProcessor(s, mc[s.mongo_db], osc)
            events = []
            for u in range(30):  # two taste groups over the first/second half of the catalogue
                group = ids[:20] if u % 2 else ids[20:]
                for j in range(6):
                    item = group[(u * 7 + j * 3) % 20]
                    events.append(
                        {
                            "id": uuid.uuid4().hex,
                            "type": "like",
                            "user_id": f"x{u}",
                            "item_id": item,
                        }
                    )
            res = await proc.apply(events)
            assert res.rejected == [] and res.accepted == len(events)
        finally:
            await osc.close()
            await mc.close()

    asyncio.run(setup())
    mc = clients.mongo(s)
    try:
        before = {d["_id"]: d for d in mc[s.mongo_db][s.items_collection].find({})}
    finally:
        mc.close()
    res = CliRunner().invoke(cli, ["train", "--iterations", "5"], obj=s)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{") :])
    written = report["als"]["written"]
    assert written == report["als"]["vectors"] > 30

    async def sync_and_read() -> tuple[Any, dict[str, Any], dict[str, int]]:
        osc, mc = clients.async_opensearch(s), clients.mongo_async(s)
        try:
            rep = await sync_once(
                s, client=osc, db=mc[s.mongo_db], embedder=Embedder(s, model=model)
            )
            await osc.indices.refresh(index=s.index_alias)
            resp = await osc.mget(
                index=s.index_alias,
                body={"ids": ids},
                params={"_source_includes": "behaviour,source_version"},
            )
            docs = {d["_id"]: d["_source"] for d in resp["docs"] if d.get("found")}
            versions = {
                d["_id"]: d["version"]
                async for d in mc[s.mongo_db][s.items_collection].find({}, {"version": 1})
            }
            return rep, docs, versions
        finally:
            await osc.close()
            await mc.close()

    rep, docs, versions = asyncio.run(sync_and_read())
    assert rep.encoded == 0, rep  # text unchanged: embeddings came from the content-hash cache
    assert rep.behaviour == written, rep
    assert versions == {i: d["version"] for i, d in before.items()}  # train bumped nothing
    with_vec = [i for i, d in docs.items() if d.get("behaviour")]
    assert len(with_vec) == written
    for i in with_vec:
        assert len(docs[i]["behaviour"]) == s.behaviour_dim
        assert docs[i]["source_version"] == versions[i]

    # a second model replaces the first: one pass sends every item again with its new vector
    # (the feed follows the pointer to the new model's collection; its vectors are dated after
    # every vector of the first)
    res = CliRunner().invoke(cli, ["train", "--iterations", "9"], obj=s)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{") :])["als"]["written"] == written
    rep, again, _ = asyncio.run(sync_and_read())
    assert rep.behaviour == written, rep
    mc = clients.mongo(s)
    try:
        db = mc[s.mongo_db]
        pointer = db[f"{s.behaviour_collection}_model"].find_one({"_id": "current"})
        new = {d["_id"]: read_vector(d["behaviour"]) for d in db[pointer["collection"]].find()}
    finally:
        mc.close()
    assert sorted(i for i, d in again.items() if d.get("behaviour")) == sorted(new)
    for i, vec in new.items():
        np.testing.assert_allclose(again[i]["behaviour"], vec, rtol=1e-6)
    assert not all(np.allclose(docs[i]["behaviour"], new[i]) for i in new)  # another model
