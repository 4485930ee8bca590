"""`opendisco train als` and `train similarity` publish a model whole: kill -9 midway, or two
runs at once, never leave the behaviour vectors (or the item–item rows) of two models served
side by side (their similarities mean nothing across models)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from tcp_faults import store_proxy

from opendisco import Settings, clients
from opendisco._exceptions import StoreBackendError
from opendisco._stored import read_vector
from opendisco.cli.main import cli
from opendisco.ingest import join_behaviour, load_movielens, publish_behaviour
from opendisco.rerank import train_als
from opendisco.signals import ITEM_SIMILARITY, ItemSimilarity

OPENDISCO = Path(sys.executable).with_name("opendisco")
#: positives from 4 stars: ~6k items, written in several chunks
MIN_RATING = 4.0


@pytest.fixture
def train_settings(settings: Settings) -> Iterator[Settings]:
    s = settings.model_copy(update={"mongo_db": f"{settings.mongo_db}tk"})
    yield s
    mc = clients.mongo(s)
    mc.drop_database(s.mongo_db)
    mc.close()


def _env(s: Settings) -> dict[str, str]:
    return dict(
        os.environ,
        OPENDISCO_MONGO_URL=s.mongo_url,
        OPENDISCO_MONGO_DB=s.mongo_db,
        OPENDISCO_ITEMS_COLLECTION=s.items_collection,
    )


def _cmd(movielens: Path, iterations: int) -> list[str]:
    return [
        str(OPENDISCO),
        "train",
        "als",
        "--movielens",
        str(movielens),
        "--min-rating",
        str(MIN_RATING),
        "--iterations",
        str(iterations),
    ]


@pytest.fixture(scope="module")
def ratings(movielens: Path) -> Any:
    return load_movielens(movielens).ratings


def _model(ratings: Any, iterations: int) -> dict[str, Any]:
    """The vectors a run writes (ALS here is deterministic: seed 0, one thread), as the
    float32 they are stored in."""
    pos = [(str(r[0]), str(r[1]), 1.0) for r in ratings if float(r[2]) >= MIN_RATING]
    vectors = train_als(pos, factors=32, iterations=iterations).vectors()
    return {i: np.asarray(v, dtype=np.float32) for i, v in vectors.items()}


def _train_here(s: Settings, movielens: Path, iterations: int) -> None:
    """One `train als` run in this process (a subprocess costs seconds of imports)."""
    res = CliRunner().invoke(cli, _cmd(movielens, iterations)[1:], obj=s)
    assert res.exit_code == 0, res.output


def _sample(model: dict[str, Any]) -> list[str]:
    """Every 10th item, in the order a run writes them: some of every chunk it writes."""
    return sorted(list(model)[::10])


def _served(s: Settings, ids: list[str]) -> dict[str, np.ndarray]:
    """Item id → the behaviour vector every engine document is built with now."""

    async def read() -> list[Any]:
        mc = clients.mongo_async(s)
        try:
            return await join_behaviour(mc[s.mongo_db], s, [{"_id": i} for i in ids])
        finally:
            await mc.close()

    out = {}
    for doc in asyncio.run(read()):
        vec = read_vector(doc.get("behaviour"), s.behaviour_dim)
        if vec is not None:
            out[doc["_id"]] = vec
    return out


def _models_served(
    served: dict[str, np.ndarray], models: dict[str, dict[str, np.ndarray]]
) -> set[str]:
    """The names of the models whose vectors are among ``served`` (one item each: its vector
    is one model's, or none's)."""
    found = set()
    for item, vec in served.items():
        for name, vectors in models.items():
            if item in vectors and np.array_equal(vectors[item], vec):
                found.add(name)
                break
        else:
            found.add("neither")
    return found


def _new_docs(s: Settings, since: datetime, mc: Any = None) -> int:
    """Vectors written since ``since`` into the behaviour collection or any collection named
    after it (wherever a run writes before it publishes)."""
    client = mc or clients.mongo(s)
    try:
        db = client[s.mongo_db]
        names = [n for n in db.list_collection_names() if n.startswith(s.behaviour_collection)]
        return sum(db[n].count_documents({"updated_at": {"$gt": since}}) for n in names)
    finally:
        if mc is None:
            client.close()


def _written_by(proc: subprocess.Popen[bytes], s: Settings, since: datetime) -> None:
    """Wait until ``proc`` (a `train als` run) has written vectors since ``since``."""
    deadline = time.monotonic() + 60
    mc = clients.mongo(s)
    try:
        while _new_docs(s, since, mc) == 0:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        mc.close()


def _models_left(s: Settings) -> list[str]:
    mc = clients.mongo(s)
    try:
        names = mc[s.mongo_db].list_collection_names()
        return sorted(n for n in names if n.startswith(f"{s.behaviour_collection}__"))
    finally:
        mc.close()


def test_kill_9_midway_through_publishing_leaves_the_previous_model_served(
    train_settings: Settings, movielens: Path, ratings: Any
) -> None:
    s = train_settings
    assert s.behaviour_dim == 32
    _train_here(s, movielens, 1)
    first, second, third = (_model(ratings, n) for n in (1, 3, 2))
    ids = _sample(first)
    assert _models_served(_served(s, ids), {"first": first}) == {"first"}
    published = datetime.now(UTC)

    proc = subprocess.Popen(
        _cmd(movielens, 3), env=_env(s), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _written_by(proc, s, published)  # killed once its first chunk is written
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    finally:
        proc.kill()
    assert 0 < _new_docs(s, published) < len(first)  # killed midway
    served = _served(s, ids)
    assert _models_served(served, {"first": first, "second": second}) == {"first"}
    assert sorted(served) == ids
    left = _models_left(s)
    assert len(left) == 2  # the first model's and the killed run's

    # the next run publishes whole and drops what the killed one wrote (the first model's
    # collection stays until the next publish: a reader may have resolved it just before)
    _train_here(s, movielens, 2)
    assert _models_served(_served(s, ids), {"third": third}) == {"third"}
    now = _models_left(s)
    assert len(now) == 2 and left[0] in now and left[1] not in now


def test_two_runs_at_once_each_publish_their_model_whole(
    train_settings: Settings, movielens: Path, ratings: Any
) -> None:
    s = train_settings
    runs = [
        subprocess.Popen(
            _cmd(movielens, n), env=_env(s), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for n in (1, 3)
    ]
    for proc in runs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
    one, three = _model(ratings, 1), _model(ratings, 3)
    served = _served(s, _sample(one))
    found = _models_served(served, {"one": one, "three": three})
    assert found in ({"one"}, {"three"})  # the one published last, whole
    assert sorted(served) == _sample(one)  # (both have the same items)
    assert len(_models_left(s)) == 2  # the served model and the one before it


@pytest.mark.parametrize("other", ["dropped_it", "switched"])
async def test_a_publish_that_lost_its_lease_never_switches_to_its_model(
    train_settings: Settings, other: str
) -> None:
    """Paused past its lease, a publish finds its collection dropped (or the pointer moved)
    by the publish that took over: it fails, and the model served stays."""
    s = train_settings
    mc, sync = clients.mongo_async(s), clients.mongo(s)
    db = mc[s.mongo_db]
    try:
        first = await publish_behaviour(db, s, {"i0": [1.0] * 32})
        taken: list[str] = []

        def taken_over(_n: int) -> None:  # after its first chunk (what the other did)
            if taken:
                return
            names = sync[s.mongo_db].list_collection_names()
            (mine,) = [
                n
                for n in names
                if n.startswith(f"{s.behaviour_collection}__als") and n != first.collection
            ]
            taken.append(mine)
            if other == "dropped_it":
                sync[s.mongo_db].drop_collection(mine)
            else:
                sync[s.mongo_db][f"{s.behaviour_collection}_model"].update_one(
                    {"_id": "current"}, {"$set": {"version": "another"}}
                )

        vectors = {f"i{k}": [float(k % 5 + 1)] * 32 for k in range(2500)}  # three chunks
        with pytest.raises(StoreBackendError, match="lease"):
            await publish_behaviour(db, s, vectors, progress=taken_over)
        assert taken
        pointer = sync[s.mongo_db][f"{s.behaviour_collection}_model"].find_one()
        assert pointer["collection"] == first.collection
        docs = await join_behaviour(db, s, [{"_id": "i0"}, {"_id": "i1"}])
        assert [d["_id"] for d in docs if d.get("behaviour") is not None] == ["i0"]
    finally:
        await mc.close()
        sync.close()


# --- `train similarity`: the item–item rows of one EASE model, never of two ----------------


def _similarity_cmd(movielens: Path, lam: float) -> list[str]:
    return [
        str(OPENDISCO),
        *("train", "similarity", "--movielens", str(movielens), "--max-items", "600"),
        *("--top-n", "20", "--lam", str(lam)),
    ]


def _similarity_here(s: Settings, movielens: Path, lam: float) -> str:
    """One `train similarity` run in this process; returns the version it wrote."""
    res = CliRunner().invoke(cli, _similarity_cmd(movielens, lam)[1:], obj=s)
    assert res.exit_code == 0, res.output
    return str(json.loads(res.output[res.output.index("{") :])["similarity"]["version"])


def _similarity_rows(s: Settings, ids: list[str]) -> dict[str, dict[str, float]]:
    """The rows a request reads now."""

    async def read() -> dict[str, dict[str, float]]:
        mc = clients.mongo_async(s)
        try:
            return await ItemSimilarity(mc[s.mongo_db]).rows(ids)
        finally:
            await mc.close()

    return asyncio.run(read())


def _similarity_tables(db: Any) -> list[str]:
    """The collections holding rows (the table, or a model's of its own)."""
    names = db.list_collection_names()
    return [
        n for n in names if n.startswith(ITEM_SIMILARITY) and not n.endswith(("_locks", "_model"))
    ]


def _rows_not_of(s: Settings, version: str) -> int:
    """Rows of another version than ``version``, wherever a run writes them."""
    mc = clients.mongo(s)
    try:
        db = mc[s.mongo_db]
        tables = _similarity_tables(db)
        return sum(db[n].count_documents({"version": {"$ne": version}}) for n in tables)
    finally:
        mc.close()


#: a command writing rows (``insert``/``update`` on the table or a model's collection)
ROWS_WRITE = re.compile(
    rb"\x02(?:insert|update)\x00.{4}" + ITEM_SIMILARITY.encode() + rb"(?:__|\x00)", re.S
)


async def test_kill_9_midway_through_train_similarity_leaves_the_previous_rows_served(
    train_settings: Settings, movielens: Path
) -> None:
    """Killed midway, `train similarity` left the new model's rows for the items it had
    written and the old model's for the rest: a table of two models (each item's row of
    another fit) until the next successful run. The run's store traffic goes through a
    proxy that holds its fourth write of rows: it is killed with three written."""
    s = train_settings
    first = await asyncio.to_thread(_similarity_here, s, movielens, 200.0)
    mc = clients.mongo(s)
    try:  # the items with a row (the model's collection holds nothing else)
        (table,) = _similarity_tables(mc[s.mongo_db])
        ids = sorted(d["_id"] for d in mc[s.mongo_db][table].find({}, projection={"_id": 1}))
    finally:
        mc.close()
    before = await asyncio.to_thread(_similarity_rows, s, ids)
    assert len(before) == len(ids) > 500
    proxy = await store_proxy(s.mongo_url)
    writes = [0]

    def fourth_on(data: bytes) -> bool:
        if ROWS_WRITE.search(data):
            writes[0] += 1
        return writes[0] > 3

    proxy.hold_if = fourth_on
    env = _env(s) | {"OPENDISCO_MONGO_URL": proxy.mongo_url}
    proc = subprocess.Popen(
        _similarity_cmd(movielens, 20.0), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not proxy.held:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    finally:
        proc.kill()
        await proxy.close()
    assert 0 < await asyncio.to_thread(_rows_not_of, s, first) < len(ids)  # killed midway
    assert await asyncio.to_thread(_similarity_rows, s, ids) == before  # the first's rows, all

    # the next run serves its model whole and drops what the killed one wrote
    await asyncio.to_thread(_similarity_here, s, movielens, 50.0)
    after = await asyncio.to_thread(_similarity_rows, s, ids)
    assert after.keys() == before.keys() and all(after[i] != before[i] for i in ids[:50])
    mc = clients.mongo(s)
    try:
        assert len(_similarity_tables(mc[s.mongo_db])) == 2  # served, and the one before
    finally:
        mc.close()
