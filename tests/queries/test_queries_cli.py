"""CLI: templates validate/show, recommend and similar against the fixture query_catalogue."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from opendisco import Settings
from opendisco.cli.main import cli
from opendisco.queries import request_for_user
from opendisco.signals import UserState


def _invoke(settings: Settings, *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), obj=settings, catch_exceptions=False)
    return result


def test_templates_validate_and_show(
    query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    res = _invoke(query_settings, "templates", "validate")
    assert res.exit_code == 0, res.output
    assert "sources valid" in res.output and "FAIL" not in res.output
    res = _invoke(
        query_settings,
        "templates",
        "show",
        "search",
        "--params",
        json.dumps({"query_text": '{"x": "{{y}}"}'}),
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["sources"]["lexical"]
    bad = CliRunner().invoke(
        cli, ["templates", "show", "search", "--params", '{"nope": 1}'], obj=query_settings
    )
    assert bad.exit_code == 2 and "unknown parameters" in bad.output


def test_request_for_user_builds_from_documents() -> None:
    user = {
        "_id": "u1",
        "interests": ["jazz"],
        "gender": "f",
        "age": 30,
        "pref_genders": ["m"],
        "location": {"lat": 1, "lon": 2},
    }
    state = UserState(
        "u1",
        vector=[0.1, 0.2],
        seen=["s1"],
        blocked=["b1"],
        positives=[{"id": "p1"}],
        negatives=[{"id": "n1"}],
    )
    req = request_for_user(user, state, k=5)
    assert req.surface == "for_you" and req.user_vector == [0.1, 0.2]
    assert req.interests == ["jazz"] and req.location == {"lat": 1.0, "lon": 2.0}
    # who may be returned is the hard rules' job (opendisco.serving.HardRules), not this one's
    assert req.exclude_ids == [] and req.viewer is None
    assert request_for_user(user, None).surface == "cold_start"


def test_recommend_and_similar_print_sources(
    query_settings: Settings, query_catalogue: list[dict[str, Any]], mongo_db: Any, run_id: str
) -> None:
    jazz = [d for d in query_catalogue if d.get("category") == "jazz"]
    uid = f"q-{run_id}"
    vec = [sum(c) / 5 for c in zip(*(d["embedding"] for d in jazz[:5]), strict=True)]
    mongo_db["users"].insert_one({"_id": uid, "interests": ["jazz"]})
    mongo_db["user_state"].insert_one({"_id": uid, "vector": vec, "seen": [jazz[0]["id"]]})
    res = _invoke(query_settings, "recommend", uid, "-k", "5", "--explain", "--candidates")
    assert res.exit_code == 0, res.output
    assert "for_you for " + uid in res.output and "semantic" in res.output
    assert "rendered queries" in res.output and "per-component contributions" in res.output
    assert "rrf " in res.output and jazz[0]["id"] not in res.output.split("per-component")[1]
    served = _invoke(query_settings, "recommend", uid, "-k", "5", "--explain")
    assert served.exit_code == 0, served.output
    assert "candidate stage" in served.output and "rerank steps" in served.output
    assert jazz[0]["id"] not in served.output.split("rerank steps")[1]  # seen: filtered
    res = _invoke(query_settings, "recommend", "nobody-" + run_id, "-k", "3")
    assert res.exit_code == 0 and "cold_start" in res.output
    res = _invoke(query_settings, "similar", jazz[1]["id"], "-k", "5")
    assert res.exit_code == 0, res.output
    assert "similar to" in res.output and "lexical" in res.output
    missing = CliRunner().invoke(cli, ["similar", "no-such-item"], obj=query_settings)
    assert missing.exit_code == 1 and "NotFound" in missing.output
