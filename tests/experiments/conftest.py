"""A small marketplace on the real servers for the served-experiment tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from opendisco import Settings, clients
from opendisco.ingest import generate_marketplace, write_sample


@pytest.fixture(scope="session")
def ex_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "index_alias": f"{settings.index_alias}-ex",
            "mongo_db": f"{settings.mongo_db}ex",
            "experiments_holdout": 0.0,
        }
    )


@pytest.fixture(scope="session")
async def ex_market(
    ex_settings: Settings, model: Any
) -> AsyncIterator[tuple[list[dict], list[dict]]]:
    from opendisco.ingest import Embedder
    from opendisco.ingest._reindex import reindex

    items, users = generate_marketplace(200, seed=5)
    write_sample(ex_settings, items, users)
    report = await reindex(ex_settings, embedder=Embedder(ex_settings, model=model))
    assert report.indexed == len(items), report
    yield items, users
    sync = clients.mongo(ex_settings)
    sync.drop_database(ex_settings.mongo_db)
    sync.close()


@pytest.fixture
async def ex_db(ex_settings: Settings) -> AsyncIterator[Any]:
    mongo = clients.mongo_async(ex_settings)
    yield mongo[ex_settings.mongo_db]
    await mongo.close()


@pytest.fixture
async def ex_discovery(ex_settings: Settings, ex_market: Any, model: Any) -> AsyncIterator[Any]:
    from opendisco.serving import Discovery

    os_client = clients.async_opensearch(ex_settings)
    mongo = clients.mongo_async(ex_settings)
    yield Discovery(ex_settings, os_client, mongo[ex_settings.mongo_db], model=model)
    await os_client.close()
    await mongo.close()
