"""Pure rendering: parameter validation, user text as data, goldens, fusion arithmetic."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from opendisco import ConfigError, TemplateParamError, load_settings
from opendisco.queries import (
    SURFACES,
    CandidateRequest,
    _template,
    clip_terms,
    fuse,
    render,
    request_for_user,
    request_params,
    script_params,
    surfaces,
    template_version,
    to_mustache,
)

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("OPENDISCO_REGEN_GOLDEN") == "1"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

GOLDEN_PARAMS: dict[str, dict[str, Any]] = {
    "for_you": {
        "k": 50,
        "now": NOW,
        "user_vector": [0.6, 0.8, 0.0, 0.0],
        "behaviour_vector": [1.0, 0.0],
        "interests": ["jazz", "hiking"],
        "interests_text": "jazz hiking",
        "exclude_ids": ["seen1", "blocked1", "p1"],
        "viewer_id": "u1",
        "exclude_owners": ["u7", "u9"],
        "exposure_index": "od-items-exposures",
        "viewer_gender": "f",
        "viewer_age": 30,
        "viewer_pref_genders": ["m"],
        "viewer_pref_age_min": 25,
        "viewer_pref_age_max": 40,
        "location": {"lat": 52.5, "lon": 13.4},
        "fresh_since": "2026-05-18T12:00:00Z",
        # the trained item-item neighbours (the itemsim_candidates setting's source)
        "itemsim_ids": ["m4", "m9"],
        "itemsim_weights": [0.42, 0.17],
    },
    "similar": {
        "k": 20,
        "now": NOW,
        "item_id": "m1",
        "item_vector": [0.0, 1.0, 0.0, 0.0],
        "index": "od-items",
    },
    "search": {
        "k": 20,
        "now": NOW,
        "query_text": 'jazz "club" {{x}}',
        "user_vector": [0.6, 0.8, 0.0, 0.0],
        "query_vector": [1.0, 0.0, 0.0, 0.0],
    },
    "cold_start": {
        "k": 30,
        "now": NOW,
        "interests": ["jazz"],
        "interests_text": "jazz",
        "fresh_since": "2026-05-18T12:00:00Z",
        "viewer_id": "u2",
        "viewer_gender_unknown": True,
        "viewer_age_unknown": True,
    },
    "trending": {
        "k": 10,
        "now": NOW,
        "kinds": ["movie"],
        "trending_ids": ["m7", "m3"],  # live decayed like/match counts (ExposureStore.trending)
        "trending_weights": [12.5, 4.0],
    },
}


def test_every_surface_has_a_template_file() -> None:
    assert sorted(surfaces()) == sorted(SURFACES)


@pytest.mark.parametrize("surface", SURFACES)
def test_golden_render(surface: str) -> None:
    got = render(surface, GOLDEN_PARAMS[surface])
    path = GOLDEN / f"{surface}.json"
    text = json.dumps(got, indent=2, sort_keys=True) + "\n"
    if REGEN or not path.exists():
        if not REGEN:
            pytest.fail(f"{path} missing: run with OPENDISCO_REGEN_GOLDEN=1")
        path.write_text(text)
    assert json.loads(path.read_text()) == got, (
        f"{surface} renders differently from {path}; if intended, regenerate with "
        "OPENDISCO_REGEN_GOLDEN=1 and review the diff"
    )


@pytest.mark.parametrize("surface", SURFACES)
def test_defaults_render_and_version_is_content_hash(surface: str) -> None:
    params = {"query_text": "x"} if surface == "search" else {}
    if surface == "similar":
        params = {"item_id": "m1"}
    out = render(surface, params)
    assert out["version"] == template_version(surface)
    assert out["version"].startswith(f"{surface}@") and len(out["version"]) == len(surface) + 13
    assert out["sources"], surface
    assert template_version().startswith("templates@")


def test_unknown_missing_and_mistyped_parameters_are_rejected() -> None:
    with pytest.raises(TemplateParamError, match="unknown parameters"):
        render("trending", {"kk": 1})
    with pytest.raises(TemplateParamError, match="missing required parameter 'query_text'"):
        render("search", {})
    with pytest.raises(TemplateParamError, match="expected an integer"):
        render("trending", {"k": "10"})
    with pytest.raises(TemplateParamError, match="> max"):
        render("trending", {"k": 100000})
    with pytest.raises(TemplateParamError, match="finite"):
        render("for_you", {"user_vector": [float("nan"), 1.0]})
    with pytest.raises(TemplateParamError, match="must be numbers"):
        render("for_you", {"user_vector": ["a", 1.0]})
    with pytest.raises(TemplateParamError, match="lat/lon"):
        render("trending", {"location": {"lat": "north", "lon": 1}})
    loc = render("trending", {"location": {"lat": 1, "lon": 2, "name": "x"}})
    assert '"origin": {"lat": 1.0, "lon": 2.0}' in json.dumps(loc)
    with pytest.raises(TemplateParamError, match="ISO-8601"):
        render("trending", {"now": "yesterday"})
    with pytest.raises(TemplateParamError, match="expected a list of strings"):
        render("for_you", {"exclude_ids": "abc"})
    with pytest.raises(TemplateParamError, match="unknown surface"):
        render("nope", {})


HOSTILE = [
    '"}}, "match_all": {}, "x": {{"',
    "{{#toJson}}user_vector{{/toJson}} {{/x}} {{{raw}}}",
    "\\\" OR 1=1 -- ' ; DROP",
    "title:* AND (NOT x) ~2 ^5 [a TO z]",
    "\u0000\u2028 emoji 🎷 ñ",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_user_text_is_placed_as_a_json_value(text: str) -> None:
    out = render("search", {"query_text": text})
    mm = out["sources"]["lexical"]["query"]["function_score"]["query"]["bool"]["must"][0]
    assert mm["multi_match"]["query"] == text
    # and survives a JSON round trip unchanged (no structure leaked from the text)
    again = json.loads(json.dumps(out))
    assert again == out
    assert "match_all" not in json.dumps(out["sources"]["lexical"]["query"]).replace(
        json.dumps(text)[1:-1], ""
    )


def test_long_text_keeps_its_first_terms_verbatim() -> None:
    text = ",".join(f"w{i}" for i in range(3000))  # 10k+ chars, 3000 tokens, no spaces
    assert len(text) > 10_000
    out = render("search", {"query_text": text})
    q = out["sources"]["lexical"]["query"]["function_score"]["query"]["bool"]["must"][0]
    assert text.startswith(q["multi_match"]["query"])
    assert clip_terms(q["multi_match"]["query"], 10_000) == q["multi_match"]["query"]
    assert q["multi_match"]["query"].count(",") == 199
    assert q["multi_match"]["query"].endswith(",w199")
    assert clip_terms("a b c", 2) == "a b" and clip_terms("a b", 5) == "a b"
    # one term per Han ideograph, Hiragana character or emoji: what the engine's tokenizer
    # makes of them (a word-run count saw one term in a line of ideographs, none in emoji)
    assert clip_terms("日本語の本", 3) == "日本語"
    assert clip_terms("ひらがな", 2) == "ひら"
    assert clip_terms("🎷🎺 jazz", 2) == "🎷🎺"
    assert clip_terms("jazz日本🎷", 2) == "jazz日"
    assert clip_terms("Привет мир café", 2) == "Привет мир"  # words of other scripts stay whole
    assert clip_terms("a, b. c!", 2) == "a, b"  # ASCII punctuation is no term
    assert clip_terms("bアcイ", 3) == "bアc"  # Katakana forms no word with Latin letters
    assert clip_terms("b\u0d04c\u0d04", 2) == "b\u0d04"  # a letter newer than Unicode 3.2
    with pytest.raises(TemplateParamError, match="max_len"):
        render("search", {"query_text": "x" * 20_001})


def test_optional_clauses_follow_parameters() -> None:
    bare = json.dumps(render("trending", {}))
    assert "location" not in bare and "pref_genders" not in bare and "_capped" not in bare
    full = json.dumps(
        render(
            "trending",
            {"location": {"lat": 1, "lon": 2}, "viewer_gender": "f", "exposure_index": "e"},
        )
    )
    assert '"origin": {"lat": 1.0, "lon": 2.0}' in full
    assert '"pref_genders": "f"' in full and '"_capped"' in full


def test_sources_need_their_required_parameters() -> None:
    out = render("for_you", {})
    assert set(out["sources"]) == {"trending", "fresh"}
    skipped = {"semantic", "lexical", "behaviour", "graph", "itemsim", "likers", "mutual"}
    assert set(out["skipped"]) == skipped


def test_request_params_maps_the_request() -> None:
    settings = load_settings(index_alias="od-items")
    req = CandidateRequest(
        surface="for_you",
        k=7,
        user_vector=[1.0, 0.0],
        interests=["jazz", "bebop"],
        viewer={"gender": "m", "age": 33, "pref_genders": ["f"]},
        exclude_ids=["b", "a", "b"],
        now=NOW,
        params={"w_lexical": 0.1},
    )
    p = request_params(req, settings)
    assert p["exclude_ids"] == ["a", "b"] and p["interests_text"] == "jazz bebop"
    assert p["exposure_index"] == "od-items-exposures" and p["w_lexical"] == 0.1
    assert "query_text" not in p  # for_you does not declare it
    out = render("for_you", p)
    assert set(out["sources"]) == {"semantic", "lexical", "trending", "fresh"}
    assert out["fusion"]["weights"]["lexical"] == 0.1


@pytest.mark.parametrize(
    "user",
    [
        {"location": "Paris", "interests": 5},
        {"location": {"lat": 91, "lon": 0}, "interests": "jazz"},
        {"location": {"lat": "x", "lon": 2}, "interests": [{"a": 1}, None, True, "ok"]},
        {"location": {"lat": float("nan"), "lon": 2}, "interests": [f"i{n}" for n in range(500)]},
        {"location": [2.35, 48.85], "interests": ["x" * 300, *(["y" * 199] * 150)]},
    ],
)
@pytest.mark.parametrize("surface", ["cold_start", "for_you"])
def test_odd_stored_interests_and_location_steer_nothing_instead_of_failing(
    user: dict[str, Any], surface: str
) -> None:
    """A member's stored interests and location are not the caller's input: odd values turn
    the tag boosts or the geo decay off (or are cut to what the parameter holds); the request
    still renders."""
    req = request_for_user(user, None, surface=surface, now=NOW)
    p = request_params(req, load_settings(index_alias="od-items"))
    render(surface, p)
    assert req.location is None
    assert all(isinstance(i, str) and len(i) <= 200 for i in p.get("interests", []))


def test_usable_stored_interests_and_location_are_kept() -> None:
    user = {"location": {"lat": 48.85, "lon": 2.35}, "interests": ["jazz", 7]}
    req = request_for_user(user, None, surface="cold_start", now=NOW)
    assert req.location == {"lat": 48.85, "lon": 2.35} and req.interests == ["jazz", "7"]


def test_mustache_conversion_is_valid_when_flags_substituted() -> None:
    # every stored template, with toJson/sections resolved naively, must be JSON again
    import re

    for surface in SURFACES:
        for source in render(surface, GOLDEN_PARAMS[surface])["sources"]:
            src = to_mustache(surface, source)
            flat = re.sub(r"\{\{#toJson\}\}\w+\{\{/toJson\}\}", "0", src)
            flat = re.sub(r"\{\{[#/]has_\w+\}\}", "", flat)
            json.loads(flat)
    sp = script_params("trending", {"kinds": ["movie"]})
    assert sp["has_kinds"] is True and sp["has_location"] is False


def _hit(i: str) -> dict[str, Any]:
    return {"_id": i, "_score": 1.0, "_source": {"id": i}}


def test_fuse_weighted_rrf_dedups_and_carries_sources() -> None:
    hits = {"a": [_hit("x"), _hit("y")], "b": [_hit("y"), _hit("z")]}
    out = fuse(hits, {"rank_constant": 10, "weights": {"a": 1.0, "b": 2.0}}, k=10)
    by = {c.id: c for c in out}
    assert [c.id for c in out] == ["y", "z", "x"]
    assert by["y"].fused == pytest.approx(1 / 12 + 2 / 11)
    assert by["y"].ranks == {"a": 2, "b": 1} and set(by["y"].sources) == {"a", "b"}
    assert by["x"].fused == pytest.approx(1 / 11)


def test_fuse_reserves_exploration_slots() -> None:
    main = [_hit(f"m{i}") for i in range(10)]
    fresh = [_hit("n1"), _hit("n2"), _hit("m0")]
    fusion = {
        "rank_constant": 60,
        "weights": {"main": 1.0, "fresh": 0.01},
        "explore_source": "fresh",
        "explore_share": 0.4,
    }
    out = fuse({"main": main, "fresh": fresh}, fusion, k=5)
    ids = [c.id for c in out]
    assert ids[:3] == ["m0", "m1", "m2"] and ids[3:] == ["n1", "n2"]
    assert [c.explore for c in out] == [False, False, False, True, True]
    no_budget = fuse({"main": main, "fresh": fresh}, {**fusion, "explore_share": 0.0}, k=5)
    assert "n1" not in [c.id for c in no_budget]


def test_fuse_budget_has_no_float_drift() -> None:
    main = [_hit(f"m{i}") for i in range(40)]
    fresh = [_hit(f"n{i}") for i in range(10)]
    fusion = {"weights": {"fresh": 0.0}, "explore_source": "fresh", "explore_share": 0.1}
    out = fuse({"main": main, "fresh": fresh}, fusion, k=30)  # 30 * 0.1 = 3.0000000000000004
    assert sum(c.explore for c in out) == 3


def test_with_source_fields_keeps_what_a_recheck_reads() -> None:
    from opendisco.queries import with_source_fields

    keep = ("owner_id", "pref_genders", "available")
    body = {"query": {"match_all": {}}, "size": 5}
    assert with_source_fields(body, keep) == body  # whole _source: nothing to do
    assert with_source_fields({**body, "_source": True}, keep)["_source"] is True
    assert with_source_fields({**body, "_source": False}, keep)["_source"] == {
        "includes": list(keep)
    }
    got = with_source_fields({"_source": ["title", "owner_id"]}, keep)["_source"]
    assert got == {"includes": ["title", "owner_id", "pref_genders", "available"]}
    got = with_source_fields({"_source": {"excludes": ["embedding", "pref_*", "owner_id"]}}, keep)
    assert got["_source"] == {"excludes": ["embedding"]}
    got = with_source_fields({"_source": {"include": "title", "exclude": "*"}}, keep)["_source"]
    assert got == {"includes": ["title", *keep]}
    assert with_source_fields({"_source": {"excludes": ["owner_id"]}}, keep)["_source"] is True
    assert with_source_fields({"_source": False}, ())["_source"] is False
    # hits without _id: the fusion failed (KeyError, HTTP 500 on every request served)
    for none in ("_none_", ["_none_"]):
        assert "stored_fields" not in with_source_fields({**body, "stored_fields": none}, ())
        assert "stored_fields" not in with_source_fields({**body, "stored_fields": none}, keep)
    assert with_source_fields({"stored_fields": ["title"]}, ())["stored_fields"] == ["title"]


def test_a_shipped_source_without_the_hard_filter_does_not_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shipped template is rendered as written (drafts and promoted versions are wrapped in
    the shipped filter): an edit that drops ``{"$ref": "filter"}`` from one source used to
    load and leave the hard rules to the in-process check alone; now it fails loudly."""

    def drop_filter(node: Any) -> Any:
        if isinstance(node, list):
            return [drop_filter(el) for el in node if el != {"$ref": "filter"}]
        if isinstance(node, dict):
            return {k: drop_filter(v) for k, v in node.items()}
        return node

    real = _template._read

    def edited(name: str) -> tuple[str, dict[str, Any]]:
        text, raw = real(name)
        if name == "for_you":
            raw = json.loads(text)
            raw["sources"]["graph"]["body"] = drop_filter(raw["sources"]["graph"]["body"])
            text = json.dumps(raw)
        return text, raw

    _template.load.cache_clear()
    monkeypatch.setattr(_template, "_read", edited)
    try:
        with pytest.raises(ConfigError, match=r"for_you\.graph: .*\['eligibility', 'exclusions'\]"):
            _template.load("for_you")
        assert _template.load("similar").sources  # eligibility + exclusions, no "filter"
    finally:
        _template.load.cache_clear()
