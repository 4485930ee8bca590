"""Session fixtures: real OpenSearch and MongoDB-protocol servers (started when not up).

Every test session works in its own namespace (index alias prefix and Mongo database named
after a random run id), so sessions and parallel developers never collide; the namespace is
wiped at the end.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from opendisco import Settings, clients, load_settings
from opendisco.services import services


def _movielens_small() -> Path:
    """``$OPENDISCO_MOVIELENS``, else ``../shared/datasets`` beside the checkout (the project's
    data convention: datasets are read from there, never copied into the repository)."""
    if os.environ.get("OPENDISCO_MOVIELENS"):
        return Path(os.environ["OPENDISCO_MOVIELENS"])
    return Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-latest-small"


MOVIELENS_SMALL = _movielens_small()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that needs the servers (any fixture built on ``live_services``) is ``live``:
    ``pytest -m "not live"`` runs the pure-logic tests without them."""
    for item in items:
        if "live_services" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.live)


@pytest.fixture(scope="session", autouse=True)
async def _no_task_left_on_the_session_loop(
    request: pytest.FixtureRequest,
) -> AsyncIterator[None]:
    """Every test runs on the session's event loop (pyproject: loop scope ``session``), and
    at its end pytest-asyncio waits for every task left on it: one that ignores its cancel
    (a cancel a driver swallowed, gh-86296) hung a whole run after its last test, silently.
    Such tasks are cancelled here with a bound and named on stderr with their stacks
    (the run still waits for them, but says which)."""
    yield
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in left:
        task.cancel()
    if not left:
        return
    _done, stuck = await asyncio.wait(left, timeout=10)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # the run hangs after this: no report shows it
        for task in stuck:
            print(f"\na task left on the session loop ignores its cancel: {task!r}")
            task.print_stack(limit=20, file=sys.stdout)


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def live_services(base_settings: Settings, run_id: str) -> Iterator[Settings]:
    """Use running servers, or start them (idempotent) the way ``opendisco services up`` does;
    at the end of the session, drop every index and database of this run's namespace (suites
    derive sub-namespaces such as ``t<run>-items-pl`` or ``t<run>ev``)."""
    for svc in services(base_settings, echo=lambda m: None):
        svc.up()
    yield base_settings
    prefix = f"t{run_id}"
    try:
        osc = clients.opensearch(base_settings)
        osc.indices.delete(index=f"{prefix}*", ignore_unavailable=True, expand_wildcards="all")
        osc.close()
    except Exception as exc:  # cleanup must not mask test results
        print(f"namespace cleanup (OpenSearch) failed: {exc!r}")
    try:
        with clients.mongo(base_settings) as mc:
            for name in mc.list_database_names():
                if name.startswith(prefix):
                    mc.drop_database(name)
    except Exception as exc:
        print(f"namespace cleanup (MongoDB) failed: {exc!r}")


@pytest.fixture(scope="session")
def settings(live_services: Settings, run_id: str) -> Settings:
    # answers are deterministic in tests: exploration is tested with an explicit Explorer
    return live_services.model_copy(
        update={"index_alias": f"t{run_id}-items", "mongo_db": f"t{run_id}", "explore_rate": 0.0}
    )


@pytest.fixture(scope="session")
def os_client(settings: Settings, run_id: str) -> Iterator[Any]:
    client = clients.opensearch(settings)
    yield client
    client.indices.delete(index=f"t{run_id}*", ignore_unavailable=True, expand_wildcards="all")
    client.close()


async def _ensure_exposures(settings: Settings) -> None:
    from opendisco.signals import ExposureStore

    client = clients.async_opensearch(settings)
    try:
        await ExposureStore(client, settings).ensure()
    finally:
        await client.close()


@pytest.fixture(scope="session")
def index_items(os_client: Any) -> Callable[[Settings, list[dict[str, Any]]], str]:
    """``index_items(settings, docs)``: a ``<alias>-v1`` index from index_templates/items.json
    behind ``settings.index_alias``, with ``docs`` bulk-indexed (every one must succeed)."""
    from opensearchpy import helpers

    from opendisco import index_templates

    def index_docs(settings: Settings, docs: list[dict[str, Any]]) -> str:
        index = f"{settings.index_alias}-v1"
        body = {**index_templates.render("items", settings), "aliases": {settings.index_alias: {}}}
        os_client.indices.create(index=index, body=body)
        ok, errors = helpers.bulk(
            os_client,
            ({"_index": index, "_id": d["id"], "_source": d} for d in docs),
            refresh=True,
            raise_on_error=False,
        )
        assert ok == len(docs), errors
        asyncio.run(_ensure_exposures(settings))  # the counters index the cap lookup reads
        return index

    return index_docs


@pytest.fixture(scope="session")
def mongo_db(settings: Settings) -> Iterator[Any]:
    client = clients.mongo(settings)
    yield client[settings.mongo_db]
    client.drop_database(settings.mongo_db)
    client.close()


@pytest.fixture
async def async_db(settings: Settings) -> AsyncIterator[Any]:
    client = clients.mongo_async(settings)
    yield client[settings.mongo_db]
    await client.close()


@pytest.fixture(scope="session")
def model(settings: Settings) -> Any:
    return clients.load_model(settings)


@pytest.fixture(scope="session")
def movielens() -> Path:
    if not (MOVIELENS_SMALL / "ratings.csv").is_file():
        pytest.fail(f"MovieLens ml-latest-small not found at {MOVIELENS_SMALL}")
    return MOVIELENS_SMALL


# --- a small clustered catalogue (signals and rerank tests) --------------------------------
# Items: 3 categories x 20 (content vectors = category direction + noise), 4 profiles, one
# item with a tiny ``exposure_cap``; alias ``t<runid>-itemsrr``, database ``t<runid>rr``.

CATS = ("alpha", "beta", "gamma")
PER_CAT = 20
CAPPED_ITEM = "cap0"


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def clustered_catalogue(dim: int, bdim: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(11)
    base = {c: _unit(rng.normal(size=dim)) for c in CATS}
    bbase = {c: _unit(rng.normal(size=bdim)) for c in CATS}
    created = datetime(2026, 1, 1, tzinfo=UTC)
    items = []
    for c in CATS:
        for j in range(PER_CAT):
            items.append(
                {
                    "id": f"{c}{j}",
                    "kind": "movie",
                    "title": f"{c} {j}",
                    "category": c,
                    "owner_id": f"o{j % 10}",
                    "quality": round(float(rng.random()), 3),
                    "popularity": float(rng.integers(1, 100)),
                    "available": True,
                    "created_at": (created + timedelta(days=j)).isoformat(),
                    "embedding": _unit(
                        base[c] + 0.35 * rng.normal(size=dim) / np.sqrt(dim)
                    ).tolist(),
                    "behaviour": _unit(
                        bbase[c] + 0.3 * rng.normal(size=bdim) / np.sqrt(bdim)
                    ).tolist(),
                }
            )
    for p in range(4):
        items.append(
            {
                "id": f"prof{p}",
                "kind": "profile",
                "title": f"person {p}",
                "category": "people",
                "owner_id": f"person{p}",
                "available": True,
                "embedding": _unit(rng.normal(size=dim)).tolist(),
            }
        )
    items.append(
        {
            "id": CAPPED_ITEM,
            "kind": "listing",
            "title": "rarely shown",
            "category": "alpha",
            "exposure_cap": 3,
            "available": True,
            "embedding": _unit(base["alpha"]).tolist(),
        }
    )
    return items


@pytest.fixture(scope="session")
def clustered_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"index_alias": f"{settings.index_alias}rr", "mongo_db": f"{settings.mongo_db}rr"}
    )


@pytest.fixture(scope="session")
def clustered_items(
    clustered_settings: Settings, os_client: Any, index_items: Any
) -> Iterator[list[dict[str, Any]]]:
    items = clustered_catalogue(clustered_settings.embedding_dim, clustered_settings.behaviour_dim)
    index_items(clustered_settings, items)
    yield items
    os_client.indices.delete(
        index=f"{clustered_settings.index_alias}*", ignore_unavailable=True, expand_wildcards="all"
    )
    client = clients.mongo(clustered_settings)
    client.drop_database(clustered_settings.mongo_db)
    client.close()


@pytest.fixture
async def clustered_db(
    clustered_settings: Settings, clustered_items: list[dict[str, Any]]
) -> AsyncIterator[Any]:
    client = clients.mongo_async(clustered_settings)
    yield client[clustered_settings.mongo_db]
    await client.close()


@pytest.fixture
async def clustered_os(clustered_settings: Settings) -> AsyncIterator[Any]:
    client = clients.async_opensearch(clustered_settings)
    yield client
    await client.close()
