"""End to end on the real servers: served lists logged → later likes → `opendisco train ltr`
→ the model served through `model_file`, named in every response's version string."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from opendisco import Settings, clients
from opendisco.cli.main import cli
from opendisco.rerank import FEATURE_NAMES
from opendisco.serving import Discovery, Explorer


async def test_log_train_serve_loop(
    market_settings: Settings, market: Any, model: Any, tmp_path: Path
) -> None:
    items, users = market
    settings = market_settings.model_copy(update={"mongo_db": f"{market_settings.mongo_db}ll"})
    os_client = clients.async_opensearch(settings)
    mongo = clients.mongo_async(settings)
    db = mongo[settings.mongo_db]
    try:
        # market items, a database of its own with the members' profiles and no history:
        # every member is cold-start here (an unknown member would get no answer at all: the
        # two-sided preferences cannot be confirmed); the items as the index has them (a
        # served page is re-checked against the store's)
        await db["users"].insert_many([dict(u) for u in users[:40]] + [dict(users[60])])
        await db[settings.items_collection].insert_many([dict(i) for i in items])
        disc = Discovery(settings, os_client, db, model=model, explorer=Explorer(rate=0.5))
        col = FEATURE_NAMES.index("popularity")
        likes = []
        for n, user in enumerate(users[:40]):
            recs = await disc.recommend(user["_id"], k=10, request_id=f"loop-{n}")
            served = recs.served
            assert served is not None and served.X is not None
            # members like the least popular of what they were shown, at its slot
            rows = list(served.shown)
            liked = min(rows, key=lambda r: (served.X[r, col], r))
            likes.append(
                {
                    "id": f"loop-like-{n}",
                    "type": "like",
                    "user_id": user["_id"],
                    "item_id": served.ids[liked],
                    "request_id": recs.request_id,
                    "position": rows.index(liked),
                    "ts": datetime.now(UTC) + timedelta(seconds=1),
                }
            )
        await disc.drain()
        res = await disc.record_events(likes, now=datetime.now(UTC) + timedelta(seconds=5))
        assert res.accepted == len(likes), res.rejected
    finally:
        await os_client.close()
        await mongo.close()

    out = tmp_path / "models"
    args = ["train", "ltr", "--out", str(out), "--k", "10", "--valid-share", "0.25"]
    run = await asyncio.to_thread(CliRunner().invoke, cli, args, obj=settings)
    assert run.exit_code == 0, run.output
    printed = json.loads(run.output[run.output.index("{") :])
    assert printed["model"].endswith("model-v1.txt")
    report = json.loads((out / "model-v1.json").read_text())
    # every logged list is joined; a list with fewer than two eligible candidates (two-sided
    # preferences can leave a member one) cannot be ranked and is counted as skipped
    skipped = report["skipped_lists"]
    assert report["lists"] + sum(skipped.values()) == 40 and report["lists"] >= 30, skipped
    assert skipped["no_user"] == skipped["no_positive"] == 0
    assert report["features"] == list(FEATURE_NAMES)
    assert report["metrics"]["valid_ndcg@10"] >= report["metrics"]["valid_logged_ndcg@10"]

    # off-policy: the explored half of the logged lists values the new model and the linear one
    for target in (str(out / "model-v1.txt"), "linear"):
        args = ["eval", "offpolicy", target, "--json", "--k", "5"]
        run = await asyncio.to_thread(CliRunner().invoke, cli, args, obj=settings)
        assert run.exit_code == 0, run.output
        ope = json.loads(run.output)
        assert 5 <= ope["lists"] < 40 and ope["k"] == 5
        for e in ope["estimates"].values():
            assert e["ci_low"] <= e["value"] <= e["ci_high"] and e["se"] >= 0

    served = settings.model_copy(update={"model_file": out / "model-v1.txt"})
    os_client = clients.async_opensearch(served)
    mongo = clients.mongo_async(served)
    try:
        disc = Discovery(served, os_client, mongo[served.mongo_db], model=model)
        recs = await disc.recommend(users[60]["_id"], k=10)
        assert "+model-v1@" in recs.version and len(recs.items) == 10
        assert recs.served is not None and recs.served.version == recs.version
        await disc.drain()  # its background pacing step and queued writes, before the close
    finally:
        await os_client.close()
        await mongo.close()
    # the CLI surfaces a model trained on nothing as a usage error, not a traceback
    empty = settings.model_copy(update={"mongo_db": f"{settings.mongo_db}none"})
    run = await asyncio.to_thread(
        CliRunner().invoke, cli, ["train", "ltr", "--out", str(out)], obj=empty
    )
    assert run.exit_code == 2 and "need at least 2" in run.output
    sync = clients.mongo(settings)
    for name in (settings.mongo_db, empty.mongo_db):
        sync.drop_database(name)
    sync.close()
