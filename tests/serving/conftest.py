"""A small marketplace, ingested through the real path (MongoDB → reindex → alias)."""

from __future__ import annotations

from typing import Any

import pytest

from opendisco import Settings, clients
from opendisco.ingest import generate_marketplace, write_sample


@pytest.fixture(scope="session")
def market_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"index_alias": f"{settings.index_alias}-pl", "mongo_db": f"{settings.mongo_db}pl"}
    )


@pytest.fixture(scope="session")
async def market(market_settings: Settings, model: Any) -> tuple[list[dict], list[dict]]:
    from opendisco.ingest import Embedder
    from opendisco.ingest._reindex import reindex

    items, users = generate_marketplace(300, seed=11)
    write_sample(market_settings, items, users)
    report = await reindex(market_settings, embedder=Embedder(market_settings, model=model))
    assert report.indexed == len(items), report
    yield items, users
    sync = clients.mongo(market_settings)
    sync.drop_database(market_settings.mongo_db)
    sync.close()


@pytest.fixture
async def discovery(market_settings: Settings, market: Any, model: Any) -> Any:
    from opendisco.serving import Discovery

    os_client = clients.async_opensearch(market_settings)
    mongo = clients.mongo_async(market_settings)
    disco = Discovery(market_settings, os_client, mongo[market_settings.mongo_db], model=model)
    yield disco
    await disco.drain()  # served impressions still queued for the counters
    await os_client.close()
    await mongo.close()
