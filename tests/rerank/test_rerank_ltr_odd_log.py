"""The learning loop's readers on a served-list log and an event log holding documents other
code wrote (real MongoDB): ``train ltr`` trains on the well-formed lists and says what it
skipped, ``eval offpolicy`` answers its usage error. Before, one served list whose ``X`` was a
string failed both with ``TypeError: string argument without an encoding``, one whose ``at``
was not a time failed the sort, and a like event whose ``ts`` was a string failed the label
join (bisect) with a TypeError traceback; such events are counted in the report (they were
left out without a word)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bson import Binary
from click.testing import CliRunner

from opendisco import Settings, clients
from opendisco.cli.main import cli
from opendisco.rerank import FEATURE_NAMES
from opendisco.signals import EVENTS, SERVED_LISTS, ServedList, ServedLog

T0 = datetime.now(UTC) - timedelta(days=2)

ODD_LISTS: list[dict[str, Any]] = [
    {"_id": "odd-x", "at": T0, "user_id": "u1", "features": ["a"], "X": "text", "ids": ["a"]},
    {"_id": "odd-at", "at": "yesterday", "user_id": "u1", "ids": ["a", "b"]},
    {"_id": "odd-ids", "at": T0, "user_id": "u1", "ids": None, "shown": None},
    {"_id": "odd-none", "at": T0},
    {"_id": "odd-shown", "at": T0, "user_id": "u1", "ids": ["a", "b"], "shown": [0, 7]},
    {"_id": "odd-feat", "at": T0, "user_id": "u1", "features": "abc", "X": Binary(b"\0" * 12)},
    {"_id": "odd-user", "at": T0, "user_id": 5, "ids": [1, 2], "propensity": "x"},
]


@pytest.fixture
async def odd_log(settings: Settings) -> AsyncIterator[Settings]:
    """200 well-formed lists with likes on their first feature's high rows, and the odd
    documents above beside them."""
    odd = settings.model_copy(update={"mongo_db": f"{settings.mongo_db}oddlog"})
    mongo = clients.mongo_async(odd)
    db = mongo[odd.mongo_db]
    rng = np.random.default_rng(0)
    log = ServedLog(db)
    events: list[dict[str, Any]] = []
    for r in range(200):
        X = rng.normal(size=(12, len(FEATURE_NAMES)))
        ids = [f"i{j}" for j in rng.choice(300, 12, replace=False)]
        at, user = T0 + timedelta(minutes=r), f"u{r % 50}"
        log.log(
            ServedList(
                request_id=f"r{r}",
                at=at,
                user_id=user,
                surface="for_you",
                requested_surface="for_you",
                version="v",
                degraded=False,
                k=6,
                feature_names=FEATURE_NAMES,
                X=X,
                ids=ids,
                shown=list(range(6)),
                propensity=[1.0] * 6,
            )
        )
        events += [
            {"_id": f"e{r}-{j}", "type": "like", "user_id": user, "item_id": ids[j], "ts": at}
            for j in range(6)
            if X[j, 0] > 0.8
        ]
        if r == 3:  # an event of a logged pair whose time is not one
            events.append({"_id": "odd-ts", "type": "like", "user_id": user, "item_id": ids[0]})
            events[-1]["ts"] = "soon"
    await log.drain()
    await db[EVENTS].insert_many(
        [*events, {"_id": "odd-empty", "type": "like"}, {"_id": "odd-u", "type": "like", "ts": T0}]
    )
    await db[SERVED_LISTS].insert_many(ODD_LISTS)
    yield odd
    await mongo.drop_database(odd.mongo_db)
    await mongo.close()


async def test_train_ltr_skips_what_is_not_a_served_list(odd_log: Settings, tmp_path: Path) -> None:
    args = ["train", "ltr", "--out", str(tmp_path), "--k", "5"]
    run = await asyncio.to_thread(CliRunner().invoke, cli, args, obj=odd_log)
    assert run.exit_code == 0, (run.output, run.exception)
    report = json.loads((tmp_path / "model-v1.json").read_text())
    assert report["inputs"]["logged_lists"] == 200  # the odd documents are not among them
    skipped = report["skipped_lists"]
    assert report["lists"] + sum(v for k, v in skipped.items() if k != "unusable_events") == 200
    assert skipped["unusable_events"] == 3  # likes without a time, a member, an item: said
    assert (tmp_path / "model-v1.txt").stat().st_size > 0
    args = ["eval", "offpolicy", "linear"]
    run = await asyncio.to_thread(CliRunner().invoke, cli, args, obj=odd_log)
    assert run.exit_code == 2 and "no explored list among 200" in run.output, (
        run.output,
        run.exception,
    )


async def test_train_ltr_is_deterministic_for_its_logs_and_seed(
    odd_log: Settings, tmp_path: Path
) -> None:
    """The same logs and ``--seed`` train the same model, byte for byte (LightGBM single
    threaded and deterministic; lists in serving order, ties by request id, whatever order
    the store answers in)."""
    models = []
    for seed in ("0", "0", "1"):
        args = ["train", "ltr", "--out", str(tmp_path), "--k", "5", "--seed", seed]
        run = await asyncio.to_thread(CliRunner().invoke, cli, args, obj=odd_log)
        assert run.exit_code == 0, (run.output, run.exception)
        models.append(json.loads(run.output[run.output.index("{") :])["model"])
    first, again, other = (Path(m).read_bytes() for m in models)
    assert first == again
    assert json.loads(Path(models[2]).with_suffix(".json").read_text())["params"]["seed"] == 1
    assert other != first  # the seed is used (feature_fraction draws the columns)
