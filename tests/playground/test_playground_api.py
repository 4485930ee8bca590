"""The playground's JSON API on the real servers: auth (admin key, session cookie + CSRF),
draft checks (422 naming the problem, never a 500), the hard rule for drafts, promotion to
versioned files, and the offline evaluation as a background job."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_support import eligible_member, h, revoke

from opendisco import Settings, clients
from opendisco.eval._synthetic import _admits
from opendisco.experiments import ExperimentStore
from opendisco.queries import load
from opendisco.serving import Artifacts, load_params, load_template


def _params(**weights: float) -> dict[str, Any]:
    return {"kind": "params", "body": {"template_params": {}, "rerank": {"weights": weights}}}


# --- auth -----------------------------------------------------------------------------------


async def test_the_api_wants_an_admin_key_or_a_session(
    pg_http: httpx.AsyncClient, pg_keys: dict[str, str]
) -> None:
    assert (await pg_http.get("/playground/api/state")).status_code == 401
    got = await pg_http.get("/playground/api/state", headers=h(pg_keys["read"]))
    assert got.status_code == 403, got.text
    ok = await pg_http.get("/playground/api/state", headers=h(pg_keys["admin"]))
    assert ok.status_code == 200, ok.text
    assert ok.json()["surfaces"] == ["for_you", "cold_start", "trending"]
    # the page itself carries no data and is public; its policy allows nothing from elsewhere
    page = await pg_http.get("/playground")
    assert page.status_code == 200 and "playground.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    bad = await pg_http.post("/playground/session", json={"key": pg_keys["read"]})
    assert bad.status_code == 403


async def test_a_session_cookie_needs_its_csrf_token_and_dies_with_its_key(
    pg_server: str, pg_settings: Settings, pg_keys: dict[str, str], pg_market: Any
) -> None:
    async with httpx.AsyncClient(base_url=pg_server, timeout=60) as browser:
        signed = await browser.post("/playground/session", json={"key": pg_keys["gone"]})
        assert signed.status_code == 200, signed.text
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/playground" in cookie
        csrf = signed.json()["csrf"]
        assert (await browser.get("/playground/api/state")).status_code == 200
        draft = {**_params(quality=1.0), "title": "csrf"}
        forged = await browser.post("/playground/api/drafts", json=draft)
        assert forged.status_code == 403 and "CSRF" in forged.json()["error"]["message"]
        wrong = await browser.post(
            "/playground/api/drafts", json=draft, headers={"X-CSRF-Token": "x" * 43}
        )
        assert wrong.status_code == 403
        made = await browser.post(
            "/playground/api/drafts", json=draft, headers={"X-CSRF-Token": csrf}
        )
        assert made.status_code == 201, made.text
        assert made.json()["author"]["name"] == "pg-gone"
        revoke(pg_settings, pg_keys["gone_id"])
        assert (await browser.get("/playground/api/state")).status_code == 401
        # signing out ends the session (a fresh one, then DELETE)
        again = await browser.post("/playground/session", json={"key": pg_keys["admin"]})
        token = again.json()["csrf"]
        out = await browser.delete("/playground/session", headers={"X-CSRF-Token": token})
        assert out.status_code == 200
        assert (await browser.get("/playground/api/state")).status_code == 401


# --- drafts: checked like the files they would become -----------------------------------------


def _with_required_x() -> dict[str, Any]:
    raw = json.loads(json.dumps(load("for_you").raw))
    raw["params"]["x"] = {"type": "int"}
    raw["sources"]["semantic"]["body"]["size"] = {"$param": "x"}
    return raw


def _nested(levels: int) -> Any:
    value: Any = 1.0
    for _ in range(levels):
        value = [value]
    return value


def _with_source_query(query: Any) -> dict[str, Any]:
    raw = json.loads(json.dumps(load("for_you").raw))
    raw["sources"]["semantic"]["body"]["query"] = query
    return raw


BAD_DRAFTS = [
    (_params(no_such_feature=1.0), "unknown feature"),
    (
        {"kind": "params", "body": {"template_params": {"w_semantic": -1}}},
        "w_semantic",
    ),
    (
        {"kind": "params", "body": {"template_params": {"for_you": {"w_semantik": 1.0}}}},
        "w_semantik",
    ),
    (
        {"kind": "params", "body": {"template_params": {"exclude_ids": []}}},
        "cannot be overridden",
    ),
    (
        {"kind": "params", "body": {"template_params": {"for_you": {"viewer_gender": None}}}},
        "cannot be overridden",
    ),
    ({"kind": "params", "body": ["not", "an", "object"]}, "JSON object"),
    ({"kind": "params", "body": {"rerank": {"mmr_lambda": 7}}}, "mmr_lambda"),
    ({"kind": "template", "surface": "for_you", "body": {"sources": {}}}, "sources"),
    (
        {
            "kind": "template",
            "surface": "for_you",
            "body": {"sources": {"a": {"body": {"size": {"$param": "nope"}}}}},
        },
        "undeclared parameter 'nope'",
    ),
    (
        {
            "kind": "template",
            "surface": "for_you",
            "body": {"sources": {"a": {"body": {"query": {"$ref": "no_fragment"}}}}},
        },
        "unknown fragment",
    ),
    (
        {
            "kind": "template",
            "surface": "for_you",
            "body": {
                "params": {"x": {"type": "int"}},
                "sources": {"a": {"body": {"size": {"$param": "x"}}}},
            },
        },
        "must declare ['behaviour_vector'",
    ),
    (
        {"kind": "template", "surface": "for_you", "body": _with_required_x()},
        "does not render: for_you: missing required parameter 'x'",
    ),
    ({"kind": "template", "surface": "similar", "body": {}}, "surface must be one of"),
    # nested past Python's recursion limit in the template's parser and store (a 500), though
    # well within the request parser's: 600 levels (the shipped templates nest 13-16)
    (
        {"kind": "template", "surface": "for_you", "body": _with_source_query(_nested(600))},
        "nests deeper than 64 levels",
    ),
    ({"kind": "template", "surface": "for_you", "body": "{"}, "JSON object"),
]


@pytest.mark.parametrize(("draft", "needle"), BAD_DRAFTS)
async def test_a_bad_draft_is_a_422_naming_the_problem(
    pg_http: httpx.AsyncClient,
    pg_keys: dict[str, str],
    pg_market: dict[str, Any],
    draft: dict[str, Any],
    needle: str,
) -> None:
    for path, body in (
        ("/playground/api/validate", draft),
        ("/playground/api/drafts", draft),
        ("/playground/api/compare", {"user_id": eligible_member(pg_market), "draft": draft}),
    ):
        got = await pg_http.post(path, json=body, headers=h(pg_keys["admin"]))
        assert got.status_code == 422, (path, got.text)
        assert needle in got.text, got.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"template_params": {"for_you": {"w_geo\\ud800": 1.0}}}',  # a key
        b'{"template_params": {}, "rerank": {}, "note": "\\udfff"}',  # a value
    ],
)
async def test_a_draft_holding_a_lone_surrogate_is_a_422_and_not_stored(
    pg_http: httpx.AsyncClient,
    pg_keys: dict[str, str],
    pg_market: dict[str, Any],
    body: bytes,
) -> None:
    """The JSON escape of a lone surrogate is taken by the request's parser; in a declared
    string field pydantic refuses it, but a draft's body is any JSON. The draft was stored
    and answered with a 500 (its text cannot be encoded), and every later read of it failed
    the same way."""
    headers = {**h(pg_keys["admin"]), "content-type": "application/json"}
    draft = b'{"kind": "params", "body": ' + body + b"}"
    listed = await pg_http.get("/playground/api/drafts", headers=h(pg_keys["admin"]))
    for path, content in (
        ("/playground/api/validate", draft),
        ("/playground/api/drafts", draft),
        (
            "/playground/api/compare",
            b'{"user_id": "%s", "draft": %s}' % (eligible_member(pg_market).encode(), draft),
        ),
    ):
        got = await pg_http.post(path, content=content, headers=headers)
        assert got.status_code == 422, (path, got.text)
        assert "lone surrogate" in got.json()["error"]["message"], got.text
    after = await pg_http.get("/playground/api/drafts", headers=h(pg_keys["admin"]))
    assert len(after.json()["drafts"]) == len(listed.json()["drafts"])


async def test_a_template_draft_that_drops_the_hard_filter_still_obeys_it(
    pg_http: httpx.AsyncClient, pg_keys: dict[str, str], pg_market: dict[str, Any]
) -> None:
    """Every source of the draft loses its ``{"$ref": "filter"}``: eligibility both ways,
    blocks, seen and the member's own profile (a member whose preferences admit themselves)
    still hold (the render puts every source under the shipped filter)."""
    users, items = pg_market["users"], pg_market["items"]
    uid = eligible_member(pg_market, 3, admits_self=True)
    own = [i for i, it in items.items() if it["owner_id"] == uid]
    assert own and all(_admits(users[uid], items[i]) for i in own)
    # more than the profiles eligible to them: their own would show if it were not excluded
    k = 50
    assert k > sum(
        it["owner_id"] != uid
        and _admits(users[uid], it)
        and _admits(users[it["owner_id"]], users[uid])
        for it in items.values()
    )
    admin = h(pg_keys["admin"])
    raw = json.loads(
        json.dumps(load("cold_start").raw).replace('{"$ref": "filter"}', '{"match_all": {}}')
    )
    assert '"filter"}' not in json.dumps(raw)
    draft = {"kind": "template", "surface": "cold_start", "body": raw}
    first = await pg_http.post(
        "/playground/api/compare",
        json={"user_id": uid, "surface": "cold_start", "k": k, "draft": draft},
        headers=admin,
    )
    assert first.status_code == 200, first.text
    shown = [i["id"] for i in first.json()["draft"]["items"]]
    assert len(shown) >= 4 and not set(shown) & set(own)
    # hide (block) the first, pass the second: both must leave the draft's answer
    now = datetime.now(UTC).isoformat()
    events = [
        {"id": f"pg-hide-{uid}", "type": "hide", "user_id": uid, "item_id": shown[0], "ts": now},
        {"id": f"pg-pass-{uid}", "type": "pass", "user_id": uid, "item_id": shown[1], "ts": now},
    ]
    posted = await pg_http.post("/v1/events", json={"events": events}, headers=admin)
    assert posted.status_code in (200, 202), posted.text
    again = await pg_http.post(
        "/playground/api/compare",
        json={"user_id": uid, "surface": "cold_start", "k": k, "draft": draft},
        headers=admin,
    )
    data = again.json()
    assert "-draft@" in data["draft"]["version"]
    after = [i["id"] for i in data["draft"]["items"]]
    assert shown[0] not in after and shown[1] not in after
    me = users[uid]
    for item_id in after:
        item = items[item_id]
        assert item["owner_id"] != uid
        assert _admits(me, item) and _admits(users[item["owner_id"]], me), item_id


async def test_compare_explains_both_answers_and_the_moves(
    pg_http: httpx.AsyncClient, pg_keys: dict[str, str], pg_market: dict[str, Any]
) -> None:
    draft = _params(fused=0.0, content_sim=0.0, behaviour_sim=0.0, quality=5.0, popularity=-2.0)
    got = await pg_http.post(
        "/playground/api/compare",
        json={
            "user_id": eligible_member(pg_market, 1),
            "surface": "cold_start",
            "k": 10,
            "draft": draft,
        },
        headers=h(pg_keys["admin"]),
    )
    assert got.status_code == 200, got.text
    data = got.json()
    cur, dra = data["current"], data["draft"]
    assert len(cur["items"]) == 10 and len(dra["items"]) == 10
    assert cur["version"] != dra["version"] and "+draft@" in dra["version"]
    first = cur["items"][0]
    assert first["sources"] and first["ranks"] and set(first["ranks"]) <= set(first["sources"])
    assert any(it["engine"] for it in cur["items"])  # engine score components per source
    assert any(it["trace"] for it in dra["items"])  # the rerank steps that moved items
    assert data["changes"]["changed"]
    nobody = await pg_http.post(
        "/playground/api/compare", json={"user_id": "no-such-member"}, headers=h(pg_keys["admin"])
    )
    assert nobody.status_code == 404 and "no-such-member" in nobody.text
    moves = data["changes"]["moves"]
    ids = [i["id"] for i in cur["items"]]
    for pos, it in enumerate(dra["items"]):
        m = moves[it["id"]]
        assert m["to"] == pos
        assert m["from"] == (ids.index(it["id"]) if it["id"] in ids else None)


# --- promotion ----------------------------------------------------------------------------------


async def test_promote_writes_the_next_version_once(
    pg_http: httpx.AsyncClient,
    pg_keys: dict[str, str],
    pg_settings: Settings,
    pg_versions: Path,
    pg_market: Any,
) -> None:
    admin = h(pg_keys["admin"])
    made = []
    for title in ("p-one", "p-two"):
        body = {**_params(quality=0.9), "title": title}
        r = await pg_http.post("/playground/api/drafts", json=body, headers=admin)
        made.append(r.json()["id"])
    results = await asyncio.gather(
        *(pg_http.post(f"/playground/api/drafts/{d}/promote", headers=admin) for d in made)
    )
    files = sorted(r.json()["promoted"]["file"] for r in results)
    assert [r.status_code for r in results] == [200, 200]
    assert len(set(files)) == 2 and all(f.startswith("params-v") for f in files)
    again = await pg_http.post(f"/playground/api/drafts/{made[0]}/promote", headers=admin)
    assert again.status_code == 422 and "already promoted" in again.text
    path = Path(results[0].json()["promoted"]["path"])
    _, rerank, name = load_params(path)
    assert rerank.weights["quality"] == 0.9 and name.startswith(path.stem + "@")
    # a template draft becomes template-<surface>-v<N>.json, served when named in settings
    raw = load("trending").raw
    t = await pg_http.post(
        "/playground/api/drafts",
        json={"kind": "template", "surface": "trending", "body": raw, "title": "tpl"},
        headers=admin,
    )
    tp = await pg_http.post(f"/playground/api/drafts/{t.json()['id']}/promote", headers=admin)
    assert tp.status_code == 200, tp.text
    tpath = Path(tp.json()["promoted"]["path"])
    assert tpath.name.startswith("template-trending-v") and tpath.parent == pg_versions
    assert load_template(tpath).version.startswith(tpath.stem + "@")
    served = Artifacts.from_settings(pg_settings.model_copy(update={"template_files": [tpath]}))
    assert tpath.stem in served.name and served.templates["trending"].guarded


async def test_a_params_draft_becomes_an_experiment_arm_never_a_hard_rule_override(
    pg_http: httpx.AsyncClient, pg_keys: dict[str, str], pg_settings: Settings, pg_market: Any
) -> None:
    admin = h(pg_keys["admin"])
    made = await pg_http.post(
        "/playground/api/drafts", json={**_params(quality=0.7), "title": "arm"}, headers=admin
    )
    draft = made.json()["id"]
    r = await pg_http.post(
        f"/playground/api/drafts/{draft}/experiment", json={"design": "user"}, headers=admin
    )
    assert r.status_code == 201, r.text
    exp = r.json()["experiment"]
    assert exp["id"] == f"pg-{draft}" and exp["status"] == "draft"
    assert r.json()["start"] == f"opendisco experiments start pg-{draft}"
    # stored in the experiments collection the CLI and serving read; control = as served
    mongo = clients.mongo_async(pg_settings)
    try:
        stored = await ExperimentStore(mongo[pg_settings.mongo_db]).get(exp["id"])
    finally:
        await mongo.close()
    control, treatment = stored.arms
    assert not control.overrides and treatment.rerank == {"weights": {"quality": 0.7}}
    assert (await pg_http.get(f"/playground/api/drafts/{draft}", headers=admin)).json()[
        "experiments"
    ] == [exp["id"]]
    # once per id; a pair-level design refuses an arm that changes template parameters
    again = await pg_http.post(f"/playground/api/drafts/{draft}/experiment", json={}, headers=admin)
    assert again.status_code == 422 and "exists" in again.text
    tp = await pg_http.post(
        "/playground/api/drafts",
        json={"kind": "params", "body": {"template_params": {"w_lexical": 0.3}}, "title": "tp"},
        headers=admin,
    )
    two = await pg_http.post(
        f"/playground/api/drafts/{tp.json()['id']}/experiment",
        json={"design": "two_sided"},
        headers=admin,
    )
    assert two.status_code == 422 and "template params" in two.text
    # a template draft cannot be an arm (promote it); bad input is a 422, never a 500
    raw = load("trending").raw
    t = await pg_http.post(
        "/playground/api/drafts",
        json={"kind": "template", "surface": "trending", "body": raw, "title": "tpl-arm"},
        headers=admin,
    )
    tr = await pg_http.post(
        f"/playground/api/drafts/{t.json()['id']}/experiment", json={}, headers=admin
    )
    assert tr.status_code == 422 and "promote the template" in tr.text
    bad = await pg_http.post(
        f"/playground/api/drafts/{draft}/experiment", json={"traffic": 2}, headers=admin
    )
    assert bad.status_code == 422


# --- offline evaluation ------------------------------------------------------------------------


async def test_evaluation_runs_as_a_job_with_paired_errors(
    pg_http: httpx.AsyncClient, pg_keys: dict[str, str], pg_market: Any
) -> None:
    admin = h(pg_keys["admin"])
    draft = {**_params(quality=3.0, fused=0.2), "title": "eval me"}
    made = await pg_http.post("/playground/api/drafts", json=draft, headers=admin)
    did = made.json()["id"]
    started = await pg_http.post(
        f"/playground/api/drafts/{did}/evaluations", json={}, headers=admin
    )
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["status"] == "queued"  # answered before the work
    for _ in range(600):
        job = (await pg_http.get(f"/playground/api/jobs/{job['id']}", headers=admin)).json()
        if job["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.5)
    assert job["status"] == "done", job
    result = job["result"]
    assert result["users"] == 6 and result["stage"] == "validation"
    assert [m["name"] for m in result["models"]] == ["current", "draft"]
    for d in result["diffs"]:
        assert d["n"] == 6
        assert d["diff"] == pytest.approx(d["b"] - d["a"])
        assert d["se"] >= 0 or d["se"] != d["se"]  # nan only if every difference is equal
    listed = (await pg_http.get(f"/playground/api/drafts/{did}", headers=admin)).json()
    assert listed["evaluations"][0]["id"] == job["id"]


async def test_an_evaluation_seed_past_what_the_job_store_holds_is_a_422(
    pg_http: httpx.AsyncClient, pg_keys: dict[str, str], pg_market: Any
) -> None:
    """The seed is stored in the job document, whose integers have 8 bytes: 2**63 was a 500
    (the store's encoder failed) after the draft was read."""
    admin = h(pg_keys["admin"])
    made = await pg_http.post("/playground/api/drafts", json=_params(quality=2.0), headers=admin)
    did = made.json()["id"]
    got = await pg_http.post(
        f"/playground/api/drafts/{did}/evaluations", json={"seed": 2**63}, headers=admin
    )
    assert got.status_code == 422, got.text
    assert "seed" in got.text


# --- request bodies: what is declared, as declared ----------------------------------------------

#: ``(route, body, the field the 422 names)``: a number sent as a string or a boolean was read
#: as the number (``{"users": "5"}`` as 5), a field no model declares was ignored (``{"x": 1}``:
#: the job started, 202), a traffic below one bucket (5e-324) or between two was rounded
LAX_BODIES = [
    ("evaluations", {"users": "5"}, "users"),
    ("evaluations", {"k": True}, "k"),
    ("evaluations", {"seed": 1.0}, "seed"),
    ("evaluations", {"x": 1}, "x"),
    ("experiment", {"traffic": "0.5"}, "traffic"),
    ("experiment", {"traffic": 5e-324}, "traffic"),
    ("experiment", {"traffic": 0.12345}, "traffic"),
    ("experiment", {"layer": "lax", "x": 1}, "x"),
    ("compare", {"k": "5"}, "k"),
    ("compare", {"x": 1}, "x"),
    ("drafts", {"x": 1}, "x"),
    ("validate", {"x": 1}, "x"),
    ("session", {"x": 1}, "x"),
]


async def test_a_lax_body_is_a_422_naming_the_field_and_starts_nothing(
    pg_http: httpx.AsyncClient, pg_keys: dict[str, str], pg_market: Any
) -> None:
    admin = h(pg_keys["admin"])
    draft = {**_params(quality=1.5), "title": "lax bodies"}
    did = (await pg_http.post("/playground/api/drafts", json=draft, headers=admin)).json()["id"]
    member = eligible_member(pg_market)
    paths = {
        "evaluations": (f"/playground/api/drafts/{did}/evaluations", {}),
        "experiment": (f"/playground/api/drafts/{did}/experiment", {}),
        "compare": ("/playground/api/compare", {"user_id": member}),
        "drafts": ("/playground/api/drafts", {**draft, "title": "lax extra"}),
        "validate": ("/playground/api/validate", draft),
        "session": ("/playground/session", {"key": pg_keys["admin"]}),
    }
    for route, fields, name in LAX_BODIES:
        path, base = paths[route]
        got = await pg_http.post(path, json={**base, **fields}, headers=admin)
        assert got.status_code == 422, (route, fields, got.status_code, got.text)
        named = [d["loc"][-1] for d in got.json()["error"]["detail"]]
        assert named == [name], (route, fields, got.text)
    # nothing was started, created or stored by any of them
    stored = (await pg_http.get(f"/playground/api/drafts/{did}", headers=admin)).json()
    assert stored["evaluations"] == [] and stored.get("experiments", []) == []
    listed = (await pg_http.get("/playground/api/drafts", headers=admin)).json()["drafts"]
    assert "lax extra" not in [d.get("title") for d in listed]
    # what the page sends (numbers as numbers, only declared fields) is accepted
    ok = await pg_http.post(
        f"/playground/api/drafts/{did}/experiment", json={"traffic": 0.0001}, headers=admin
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["experiment"]["traffic"] == 0.0001
