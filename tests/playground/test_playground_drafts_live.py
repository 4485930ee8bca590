"""Drafts on the real store: concurrent writes of one draft all land. FerretDB 1.x rewrites a
whole document per update, so an experiment recorded beside another (or beside an edit, or a
promotion) was lost — or undid the promotion, leaving a promoted draft editable and
promotable again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from opendisco import InvalidInput, Settings, clients
from opendisco.api.playground._drafts import DraftIn, DraftStore

AUTHOR = {"key_id": "k", "name": "tester"}


@pytest.fixture
async def drafts_db(settings: Settings) -> AsyncIterator[Any]:
    name = f"{settings.mongo_db}dr"
    client = clients.mongo_async(settings)
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


def _draft() -> DraftIn:
    return DraftIn(kind="params", title="t", body={"template_params": {}, "rerank": {}})


async def test_concurrent_experiments_of_one_draft_are_all_recorded(drafts_db: Any) -> None:
    store = DraftStore(drafts_db)
    draft = await store.create(_draft(), AUTHOR, based_on="v1")
    exps = [f"e{i}" for i in range(8)]
    await asyncio.gather(*(store.add_experiment(draft["id"], e) for e in exps))
    assert sorted((await store.get(draft["id"]))["experiments"]) == exps


async def test_an_experiment_recorded_beside_a_promotion_keeps_it(drafts_db: Any) -> None:
    store = DraftStore(drafts_db)
    for round_ in range(5):
        draft = await store.create(_draft(), AUTHOR, based_on="v1")
        exps = [f"e{round_}{i}" for i in range(4)]
        await asyncio.gather(
            store.mark_promoted(draft["id"], {"file": "p.json"}),
            *(store.add_experiment(draft["id"], e) for e in exps),
        )
        got = await store.get(draft["id"])
        assert got["status"] == "promoted" and got["promoted"] == {"file": "p.json"}
        assert sorted(got["experiments"]) == exps


async def test_an_edit_waits_for_a_promotion_in_progress(drafts_db: Any) -> None:
    """An edit landing between a promotion's read of the draft and its mark left a draft
    "promoted" whose stored body was not the one written to the version file. The edit now
    waits for the promotion, then is refused: the promoted draft keeps the promoted body."""
    store = DraftStore(drafts_db)
    draft = await store.create(_draft(), AUTHOR, based_on="v1")
    edit = DraftIn(kind="params", body={"template_params": {"w_quality": 3.0}, "rerank": {}})
    async with store.promoting(draft["id"]):
        read = await store.get(draft["id"])  # what the version file is written from
        editing = asyncio.ensure_future(store.update(draft["id"], edit, AUTHOR))
        await asyncio.sleep(0.5)
        assert not editing.done(), "the edit did not wait for the promotion"
        await store.mark_promoted(draft["id"], {"file": "params-v1.json"})
    with pytest.raises(InvalidInput, match="was promoted"):
        await editing
    got = await store.get(draft["id"])
    assert got["status"] == "promoted" and got["body"] == read["body"]
