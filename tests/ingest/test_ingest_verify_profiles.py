"""``verify`` on members whose two sides of the rules disagree, on the real servers: the rules
read a member's gender, age and preferences from their ``users`` document when they view and
from their profile when they are the candidate; an app that edited one of the two left the
member checked against two sets of preferences, and nothing said so."""

from __future__ import annotations

import asyncio
from typing import Any

from click.testing import CliRunner

from opendisco import Settings
from opendisco.cli.main import cli
from opendisco.ingest import Embedder, reindex, verify


async def test_verify_reports_profiles_whose_rules_differ_from_their_users_document(
    ingest_settings: Settings,
    ingest_catalogue: list[dict[str, Any]],
    embedder: Embedder,
    mongo_db: Any,
) -> None:
    await reindex(ingest_settings, embedder=embedder)
    users = mongo_db["users"]  # as serving reads them
    profiles = {d["owner_id"]: d for d in ingest_catalogue}
    saved = {u["_id"]: u for u in users.find({"_id": {"$in": ["u3", "u5", "u8", "u9"]}})}
    p9 = profiles["u9"]
    try:
        # edited in users only: the profile still says otherwise
        users.update_one({"_id": "u3"}, {"$set": {"pref_age_min": 99, "gender": "z"}})
        users.update_one({"_id": "u5"}, {"$set": {"pref_genders": ["z"]}})
        # the same rules stored differently: no disagreement
        users.update_one({"_id": "u8"}, {"$set": {"age": float(profiles["u8"]["age"])}})
        users.update_one({"_id": "u9"}, {"$set": {"pref_genders": p9["pref_genders"][::-1]}})
        report = await verify(ingest_settings)
        assert report.profiles_disagreeing == ["p3", "p5"], report.summary()
        assert report.disagreeing_fields == {"gender": 1, "pref_age_min": 1, "pref_genders": 1}
        assert report.ok  # the index holds what MongoDB's items say: no difference of it
        assert "profiles_disagreeing=2" in report.summary()
        args = (cli, ["verify", "--show", "1"])  # its own event loop: off this one
        res = await asyncio.to_thread(CliRunner().invoke, *args, obj=ingest_settings)
        assert res.exit_code == 1, res.output
        assert "profiles_disagreeing: ['p3'] …" in res.output
    finally:
        for uid, doc in saved.items():
            users.replace_one({"_id": uid}, doc)
