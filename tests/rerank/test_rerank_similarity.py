"""The trained item–item feature: EASE rows, the ``item_sim`` and per-list percentile columns,
the ``ItemSimilarity`` table read by the feature store (real FerretDB)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from scipy.stats import rankdata

from opendisco import Settings, clients
from opendisco.cli.main import cli
from opendisco.rerank import (
    FEATURE_NAMES,
    PERCENTILE_COLUMNS,
    CandidateBatch,
    Features,
    FeatureStore,
    RerankConfig,
    RerankContext,
    assemble_features,
    ease_neighbours,
    recency_scales,
)
from opendisco.rerank._steps import LinearScorer, average_ranks, list_percentile
from opendisco.signals import ITEM_SIMILARITY, ItemSimilarity, summed_weights


def _ease(X: np.ndarray, lam: float) -> np.ndarray:
    g = X.T @ X + lam * np.eye(X.shape[1])
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))
    np.fill_diagonal(b, 0.0)
    return b


def test_rows_are_each_items_largest_ease_weights() -> None:
    rng = np.random.default_rng(0)
    X = (rng.random((200, 30)) < 0.2).astype(float)
    ids = [f"i{j}" for j in range(30)]
    rows = ease_neighbours(sp.csr_matrix(X), ids, lam=5.0, top_n=4)
    B = _ease(X, 5.0)
    assert rows
    for src, row in rows.items():
        r = ids.index(src)
        assert len(row) <= 4 and src not in row
        for dst, w in row.items():
            assert w == pytest.approx(B[r, ids.index(dst)], abs=1e-6) and w > 0
        kept = min(row.values())
        others = [B[r, j] for j in range(30) if ids[j] not in row and j != r]
        assert max(others) <= kept + 1e-6  # nothing heavier was left out


def test_only_the_most_popular_items_are_modelled() -> None:
    X = np.zeros((10, 4))
    X[:, 0] = X[:, 1] = 1.0
    X[:3, 2] = 1.0
    X[0, 3] = 1.0
    rows = ease_neighbours(sp.csr_matrix(X), list("abcd"), lam=1.0, max_items=3)
    assert "d" not in rows and all("d" not in r for r in rows.values())


def test_item_sim_and_percentiles_leave_the_linear_order_alone() -> None:
    items = [{"id": i, "popularity": float(p)} for i, p in zip("abcd", (3, 1, 2, 2), strict=True)]
    batch = CandidateBatch.from_items(items)
    base = Features.empty(4, 4, 2)
    with_sim = Features(**{**base.__dict__, "item_sim": np.array([0.1, 0.4, 0.4, -0.2])})
    cfg, ctx = RerankConfig(), RerankContext(history=3)
    X0 = assemble_features(batch, base, ctx, cfg)
    X1 = assemble_features(batch, with_sim, ctx, cfg)
    col = {n: j for j, n in enumerate(FEATURE_NAMES)}
    np.testing.assert_allclose(X1[:, col["item_sim"]], [0.1, 0.4, 0.4, -0.2])
    np.testing.assert_allclose(X1[:, col["pct_item_sim"]], [1 / 3, 5 / 6, 5 / 6, 0.0])
    for name in PERCENTILE_COLUMNS:
        assert ((X1[:, col[f"pct_{name}"]] >= 0) & (X1[:, col[f"pct_{name}"]] <= 1)).all()
    # the one-sided linear scorer weighs none of the new columns
    lin = LinearScorer(cfg)
    np.testing.assert_array_equal(lin.score(X0), lin.score(X1))


def test_list_percentile() -> None:
    np.testing.assert_allclose(list_percentile(np.array([5.0, 1.0, 3.0])), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(list_percentile(np.array([2.0, 2.0])), [0.5, 0.5])
    np.testing.assert_allclose(list_percentile(np.array([7.0])), [0.5])
    assert list_percentile(np.array([])).shape == (0,)


def test_average_ranks_are_scipys() -> None:
    rng = np.random.default_rng(3)
    for trial in range(500):
        n = int(rng.integers(0, 300))
        values = rng.integers(0, 4, n).astype(float) if trial % 2 else rng.normal(size=n)
        if trial % 5 == 0 and n:
            values[: n // 2] = 0.0  # the usual tie: rows without the signal
        np.testing.assert_array_equal(average_ranks(values), rankdata(values, method="average"))
    with_nan = np.array([1.0, np.nan, 0.0])
    np.testing.assert_array_equal(average_ranks(with_nan), rankdata(with_nan, method="average"))


async def test_feature_store_sums_the_rows_of_the_recent_positives(
    clustered_settings: Settings,
    clustered_os: Any,
    clustered_db: Any,
    clustered_items: list[dict[str, Any]],
) -> None:
    ids = [it["id"] for it in clustered_items][:6]
    a, b, c, d = ids[:4]
    table = ItemSimilarity(clustered_db)
    try:
        assert await table.replace({a: {c: 0.5, d: 0.25}, b: {c: 1.0}}, "v1") == 2
        store = FeatureStore(clustered_settings, clustered_os, clustered_db)
        feats = await store.lookup([c, d, a], similar_from=[a, b, "no-such-item"])
        np.testing.assert_allclose(feats.item_sim, [1.5, 0.25, 0.0])
        # by recency (a is the most recent): b's row counts 0.5^(1 / half-life)
        half = 0.5 ** (1 / clustered_settings.item_sim_half_life)
        np.testing.assert_allclose(feats.item_sim_recent, [0.5 + half, 0.25, 0.0])
        later = await store.lookup([c, d, a], similar_from=[b, a])
        np.testing.assert_allclose(later.item_sim, [1.5, 0.25, 0.0])
        np.testing.assert_allclose(later.item_sim_recent, [1.0 + 0.5 * half, 0.25 * half, 0.0])
        # a replacement drops the rows of the old version (b has no row in v2)
        assert await table.replace({a: {d: 2.0}}, "v2") == 1
        assert set(await table.rows([a, b])) == {a}
        fresh = FeatureStore(clustered_settings, clustered_os, clustered_db)
        feats = await fresh.lookup([c, d], similar_from=[a, b])
        np.testing.assert_allclose(feats.item_sim, [0.0, 2.0])
        # no recent positives: no read, zeros
        assert (await fresh.lookup([c, d])).item_sim.tolist() == [0.0, 0.0]
    finally:
        await table.clear()


async def test_cached_rows_of_a_replaced_model_are_never_summed_with_the_new_models(
    clustered_settings: Settings, clustered_os: Any, clustered_db: Any
) -> None:
    """A process cached the rows it read (``meta_ttl_s``, 10 minutes): after a replace, a
    member's recent items summed the old model's cached rows with the new model's rows of the
    items not cached. Once the process reads the pointer again, every cached row goes."""
    table = ItemSimilarity(clustered_db)
    try:
        await table.replace({"a": {"x": 1.0}, "b": {"x": 1.0}}, "m1")
        store = FeatureStore(clustered_settings, clustered_os, clustered_db)
        store.similarity.followed.every_s = 0.0  # (every 30 s): reads the pointer at each lookup
        assert await store.similar_recent(["a"]) == {"x": 1.0}  # a's row cached
        await table.replace({"a": {"y": 2.0}, "b": {"y": 2.0}}, "m2")
        summed = await store.similar_both(["a", "b"])
        assert summed[0] == {"y": 4.0}  # not {"x": 1.0, "y": 2.0}
    finally:
        await table.clear()


def test_train_similarity_cli_replaces_the_table(
    clustered_settings: Settings, movielens: Any
) -> None:
    """A database from before (rows in the unversioned table, no pointer): the run serves its
    own model's collection, and drops the old table."""
    args = ["train", "similarity", "--movielens", str(movielens), "--max-items", "200"]
    mc = clients.mongo(clustered_settings)
    db = mc[clustered_settings.mongo_db]
    try:
        db[ITEM_SIMILARITY].insert_one({"_id": "stale-item", "n": "{}", "k": 0, "version": "old"})
        res = CliRunner().invoke(cli, [*args, "--top-n", "5"], obj=clustered_settings)
        assert res.exit_code == 0, res.output
        report = json.loads(res.output[res.output.index("{") :])["similarity"]
        assert 0 < report["written"] == report["rows"] <= 200
        pointer = db[f"{ITEM_SIMILARITY}_model"].find_one()
        assert pointer["collection"].startswith(f"{ITEM_SIMILARITY}__{report['version']}-")
        docs = list(db[pointer["collection"]].find({}))
        assert len(docs) == report["written"] and all(0 < d["k"] <= 5 for d in docs)
        assert {d["version"] for d in docs} == {report["version"]}
        assert ITEM_SIMILARITY in db.list_collection_names()  # kept: the one before
        # retired long enough ago that no reader follows it any more (KEEP_S)
        pointer = db[f"{ITEM_SIMILARITY}_model"]
        pointer.update_one({}, {"$set": {"retired": _aged(pointer.find_one()["retired"])}})
        res = CliRunner().invoke(cli, args, obj=clustered_settings)
        assert res.exit_code == 0, res.output
        assert ITEM_SIMILARITY not in db.list_collection_names()  # the stale row is gone
    finally:
        asyncio.run(_clear(clustered_settings))
        mc.close()


def _aged(retired: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A pointer's retired models, retired long enough ago that no reader follows them."""
    return [{**r, "at": datetime(2000, 1, 1, tzinfo=UTC)} for r in retired]


async def _clear(settings: Settings) -> None:
    mc = clients.mongo_async(settings)
    try:
        await ItemSimilarity(mc[settings.mongo_db]).clear()
    finally:
        await mc.close()


async def test_two_replaces_at_once_leave_one_whole_table(settings: Settings) -> None:
    """Two `train similarity` runs at once (real FerretDB): each replace deleted the rows of
    every other version, the other's included, and FerretDB answered their concurrent upserts
    of one row without ``nModified`` (pymongo KeyError). Under the replace lease they run in
    turn: the table is one version's rows, whole."""
    client = clients.mongo_async(settings)
    db = client[f"{settings.mongo_db}simrace"]
    try:
        tables = {
            "ease-1": {f"i{j}": {f"i{(j + 1) % 300}": 0.5} for j in range(300)},
            "ease-2": {f"i{j}": {f"i{(j + 2) % 300}": 0.25} for j in range(0, 300, 2)},
        }
        written = await asyncio.gather(
            *(ItemSimilarity(db).replace(rows, v) for v, rows in tables.items())
        )
        assert written == [300, 150]
        docs = await (await ItemSimilarity(db).served()).find({}).to_list(None)
        versions = {d["version"] for d in docs}
        assert len(versions) == 1, versions
        assert len(docs) == len(tables[versions.pop()])
        assert await db[f"{ITEM_SIMILARITY}_locks"].count_documents({}) == 0
    finally:
        await client.drop_database(f"{settings.mongo_db}simrace")
        await client.close()


async def test_two_replaces_of_one_version_leave_one_whole_table(settings: Settings) -> None:
    """`train similarity` names its version to the second: two runs finishing in one second
    (different inputs: --max-items, --movielens) replaced the table under one version, and the
    second's cleanup ("every row of another version") kept the first's rows of the items it
    did not write: 300 rows, half of each table."""
    client = clients.mongo_async(settings)
    db = client[f"{settings.mongo_db}simsame"]
    try:
        tables = [
            {f"i{j}": {f"i{(j + 1) % 300}": 0.5} for j in range(300)},
            {f"i{j}": {f"i{(j + 2) % 300}": 0.25} for j in range(0, 300, 2)},
        ]
        await asyncio.gather(*(ItemSimilarity(db).replace(t, "ease-same") for t in tables))
        rows = await ItemSimilarity(db).rows(f"i{j}" for j in range(300))
        assert rows in tables, (len(rows), sorted({w for r in rows.values() for w in r.values()}))
    finally:
        await client.drop_database(f"{settings.mongo_db}simsame")
        await client.close()


def test_recency_scales_halve_every_half_life_and_weight_the_summed_rows() -> None:
    assert recency_scales(0, 2.0) == []
    np.testing.assert_allclose(recency_scales(5, 2.0), [1.0, 0.5**0.5, 0.5, 0.5**1.5, 0.25])
    with pytest.raises(ValueError):
        recency_scales(3, 0.0)
    rows = [{"x": 1.0, "y": 2.0}, {"x": 4.0}]
    assert summed_weights(rows) == {"x": 5.0, "y": 2.0}
    assert summed_weights(rows, [1.0, 0.25]) == {"x": 2.0, "y": 2.0}


async def test_a_table_from_before_is_served_until_a_model_is_published(settings: Settings) -> None:
    """A database from before versioned models (rows in ``item_similarity``, no pointer):
    requests read those rows; a replace serves its own model's rows, and only those."""
    client = clients.mongo_async(settings)
    db = client[f"{settings.mongo_db}simold"]
    try:
        old = {"_id": "a", "n": json.dumps({"b": 0.5}), "k": 1, "version": "old"}
        await db[ITEM_SIMILARITY].insert_one(old)
        assert await ItemSimilarity(db).rows(["a", "c"]) == {"a": {"b": 0.5}}
        assert await ItemSimilarity(db).replace({"c": {"d": 1.0}}, "new") == 1
        assert await ItemSimilarity(db).rows(["a", "c"]) == {"c": {"d": 1.0}}
        assert await ItemSimilarity(db).replace({}, "empty") == 0  # nothing served: no rows
        assert await ItemSimilarity(db).rows(["a", "c"]) == {}
    finally:
        await client.drop_database(f"{settings.mongo_db}simold")
        await client.close()


async def test_a_reader_following_a_model_two_publishes_back_still_reads_its_rows(
    settings: Settings,
) -> None:
    """A process follows the pointer read at most every 30 s (``Followed``). Two publishes
    inside that window (a second `train similarity` waiting on the first's lease publishes
    right after it) dropped the model two back while the process still followed it: its
    requests read no rows (``item_sim`` 0 for every candidate, silently) until its next
    pointer read. A model stays readable ``keep_s`` after it stopped being served, and the
    first publish after that drops it (real FerretDB)."""
    client = clients.mongo_async(settings)
    db = client[f"{settings.mongo_db}simkeep"]
    try:
        await ItemSimilarity(db).replace({"a": {"x": 1.0}}, "m1")
        reader = ItemSimilarity(db, pointer_s=30.0)
        assert await reader.rows(["a"]) == {"a": {"x": 1.0}}  # follows m1 for 30 s
        for version in ("m2", "m3"):
            await ItemSimilarity(db).replace({"a": {version: 1.0}}, version)
        assert await reader.rows(["a"]) == {"a": {"x": 1.0}}  # not {}: m1 is still there
        assert await ItemSimilarity(db).rows(["a"]) == {"a": {"m3": 1.0}}
        pointer = db[f"{ITEM_SIMILARITY}_model"]
        kept = [r["collection"] for r in (await pointer.find_one())["retired"]]
        assert kept[0] == ITEM_SIMILARITY and (await reader.served()).name == kept[1]
        assert len(kept) == 3  # the table before any model, m1, m2
        # once no reader can follow them any more, the next publish drops them
        aged = _aged((await pointer.find_one())["retired"])
        await pointer.update_one({}, {"$set": {"retired": aged}})
        await ItemSimilarity(db).replace({"a": {"m4": 1.0}}, "m4")
        names = await db.list_collection_names()
        assert (await reader.served()).name not in names
        assert len([n for n in names if n.startswith(f"{ITEM_SIMILARITY}__")]) == 2
    finally:
        await client.drop_database(f"{settings.mongo_db}simkeep")
        await client.close()
