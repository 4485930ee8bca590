"""Candidate generation against the real OpenSearch with the fixture query_catalogue."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opendisco import NotFound, Settings
from opendisco.queries import (
    SURFACES,
    CandidateRequest,
    generate_candidates,
    render,
    script_id,
    script_params,
    store_templates,
    validate_templates,
)
from opendisco.serving import HardRules
from opendisco.signals import ExposureStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # the fixture query_catalogue's "now" (conftest.NOW)


def _by_id(query_catalogue: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in query_catalogue}


def _user_vector(query_catalogue: list[dict[str, Any]], topic: str) -> list[float]:
    vecs = [d["embedding"] for d in query_catalogue if d.get("category") == topic][:10]
    return [sum(col) / len(vecs) for col in zip(*vecs, strict=True)]


async def test_every_template_validates_against_the_cluster(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    checks = await validate_templates(query_os, query_settings)
    assert {c.surface for c in checks} == set(SURFACES)
    bad = [(c.surface, c.source, c.error) for c in checks if not c.ok]
    assert not bad
    assert sum(c.hits for c in checks) > 0


async def test_stored_search_templates_render_like_the_python_renderer(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]], run_id: str
) -> None:
    prefix = f"t{run_id}"
    stored = await store_templates(query_os, prefix=prefix)
    try:
        params = {
            "k": 5,
            "now": NOW,
            "interests": ["jazz"],
            "viewer_gender": "f",
            "location": {"lat": 52.0, "lon": 13.0},
            "exclude_ids": ['a"b', "{{c}}"],
        }
        ours = render("trending", params)["sources"]["trending"]
        resp = await query_os.render_search_template(
            body={
                "id": script_id("trending", "trending", prefix),
                "params": script_params("trending", params),
            }
        )
        assert resp["template_output"] == ours
        hits = await query_os.search_template(
            index=query_settings.index_alias,
            body={
                "id": script_id("trending", "trending", prefix),
                "params": script_params("trending", params),
            },
        )
        assert hits["hits"]["hits"]
    finally:
        for sid in stored:
            await query_os.delete_script(id=sid)


async def test_freshness_decay_breaks_relevance_ties(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    by = _by_id(query_catalogue)
    for surface, extra in (
        ("search", {"query_text": "quokkatwin"}),
        ("for_you", {"user_vector": by["twin-old"]["embedding"]}),
    ):
        req = CandidateRequest(surface=surface, k=10, now=NOW, exposure_caps=False, **extra)
        cs = await generate_candidates(query_os, query_settings, req)
        src = "lexical" if surface == "search" else "semantic"
        twins = [c for c in cs.candidates if c.id.startswith("twin-")]
        assert len(twins) == 2, (surface, cs.ids)
        assert twins[0].id == "twin-new"
        assert twins[0].sources[src] > twins[1].sources[src]
        assert twins[0].ranks[src] < twins[1].ranks[src]


async def test_freshness_origin_at_the_ends_of_the_date_range_is_a_date_the_engine_reads(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    # the freshness origin (``now``) and ``fresh_since`` as the engine parses them: year 999
    # was rendered "999-01-01T00:00:00Z" (strftime), which strict_date_optional_time refuses —
    # every source of the surface failed; the far future decays every item to a finite score
    for now in (datetime(999, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC)):
        for surface in ("cold_start", "for_you"):
            req = CandidateRequest(surface=surface, k=20, now=now, exposure_caps=False)
            cs = await generate_candidates(query_os, query_settings, req)
            assert not cs.errors, (now, surface, cs.errors)
            assert cs.candidates, (now, surface)
            scores = [v for c in cs.candidates for v in c.sources.values()]
            assert all(math.isfinite(v) for v in scores), (now, surface)


async def test_the_fresh_source_holds_no_item_created_after_now(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    # an item whose created_at is ahead of ``now`` (year 2099, a typo, a scheduled listing)
    # matched ``created_at >= now-14d`` for ever: an exploration candidate every day until
    # then. Here ``now`` is 100 days back, so the catalogue's newer items are "future" ones
    by = _by_id(query_catalogue)
    now = NOW - timedelta(days=100)
    for surface in ("cold_start", "for_you"):
        req = CandidateRequest(surface=surface, k=200, now=now, exposure_caps=False)
        cs = await generate_candidates(query_os, query_settings, req)
        fresh = [c.id for c in cs.candidates if "fresh" in c.sources]
        assert fresh, surface
        created = {i: datetime.fromisoformat(by[i]["created_at"]) for i in fresh}
        late = {i: t for i, t in created.items() if t > now}
        assert not late, (surface, sorted(late)[:5])
        assert all(t >= now - timedelta(days=14) for t in created.values()), surface


async def test_items_dated_at_the_ends_of_the_date_range_score_finite(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    # ingest takes created_at in years 1000..9999: the freshness gauss of either end is a
    # finite score on every source (no NaN, no engine error), and year 9999 is no fresh item
    twin = _by_id(query_catalogue)["twin-old"]
    odd = {"year-9999": "9999-12-31T23:59:59.999Z", "year-1000": "1000-01-01T00:00:00.000Z"}
    alias = query_settings.index_alias
    for i, at in odd.items():
        await query_os.index(index=alias, id=i, body={**twin, "id": i, "created_at": at})
    await query_os.indices.refresh(index=alias)
    try:
        for surface, extra in (
            ("for_you", {"user_vector": twin["embedding"], "interests": ["twin"]}),
            ("cold_start", {"interests": ["twin"]}),
        ):
            req = CandidateRequest(surface=surface, k=50, now=NOW, exposure_caps=False, **extra)
            cs = await generate_candidates(query_os, query_settings, req)
            assert not cs.errors, cs.errors
            got = {c.id: c for c in cs.candidates if c.id in odd}
            assert got, (surface, cs.ids)
            assert all(math.isfinite(v) for c in got.values() for v in c.sources.values())
            assert "year-9999" not in got or "fresh" not in got["year-9999"].sources, surface
    finally:
        for i in odd:
            await query_os.delete(index=alias, id=i, params={"refresh": "true"})


async def test_capped_blocked_and_seen_items_never_appear(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    uv = _user_vector(query_catalogue, "jazz")
    base = CandidateRequest(
        surface="for_you",
        k=40,
        user_vector=uv,
        behaviour_vector=uv[:32],
        interests=["jazz"],
        now=NOW,
    )
    first = await generate_candidates(query_os, query_settings, base)
    assert len(first.candidates) == 40 and not first.errors
    ids = first.ids
    capped, blocked, seen = ids[0:3], ids[3:6], ids[6:9]
    store = ExposureStore(query_os, query_settings)
    await store.ensure()
    now_capped = await store.record({i: query_settings.exposure_default_cap for i in capped})
    assert set(capped) <= set(now_capped)
    assert (await store.counts(capped)) == {i: query_settings.exposure_default_cap for i in capped}
    excluded = set(capped) | set(blocked) | set(seen)
    for surface, extra in (
        ("for_you", {"user_vector": uv, "behaviour_vector": uv[:32], "interests": ["jazz"]}),
        ("cold_start", {"interests": ["jazz"]}),
        ("trending", {}),
        ("search", {"query_text": "jazz saxophone trumpet swing bebop club"}),
        ("similar", {"item_id": ids[10]}),
    ):
        req = CandidateRequest(surface=surface, k=200, now=NOW, exclude_ids=blocked + seen, **extra)
        cs = await generate_candidates(query_os, query_settings, req)
        assert not cs.errors, cs.errors
        assert cs.candidates, surface
        got = set(cs.ids)
        assert not got & excluded, (surface, got & excluded)
        assert all(c.item.get("available") for c in cs.candidates), surface
        assert all("embedding" not in c.item for c in cs.candidates)
    # without the exposure cap the capped ones come back: the exclusion is the engine's doing
    again = await generate_candidates(query_os, query_settings, base)
    assert not set(again.ids) & set(capped)
    nocap = CandidateRequest(**{**base.__dict__, "exposure_caps": False})
    assert set(capped) <= set((await generate_candidates(query_os, query_settings, nocap)).ids)


async def test_hostile_query_strings_are_searched_literally(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    hostile = _by_id(query_catalogue)["hostile"]["title"]
    cs = await generate_candidates(
        query_os,
        query_settings,
        CandidateRequest(surface="search", k=5, query_text=hostile, now=NOW),
    )
    assert cs.ids[0] == "hostile" and not cs.errors
    for text in ['"}}, "query": {"match_all": {}}, "x": {{"', "* OR *:*", "title:*", "{{k}}"]:
        cs = await generate_candidates(
            query_os,
            query_settings,
            CandidateRequest(surface="search", k=5, query_text=text, now=NOW),
        )
        assert not cs.errors, (text, cs.errors)
        # syntax would match everything; as literal text it matches (next to) nothing
        assert len(cs.candidates) <= 1, (text, cs.ids)
    long = ("zyzzyva " + '{"a":"b"} ' * 1000)[:10_000]
    cs = await generate_candidates(
        query_os, query_settings, CandidateRequest(surface="search", k=5, query_text=long, now=NOW)
    )
    assert cs.ids == ["hostile"] and not cs.errors
    many_terms = ",".join(f"w{i}" for i in range(3000)) + " zyzzyva"
    cs = await generate_candidates(
        query_os,
        query_settings,
        CandidateRequest(surface="search", k=5, query_text=many_terms, now=NOW),
    )
    assert not cs.errors  # clipped below Lucene's clause limit, no TooManyClauses


#: texts the engine's standard tokenizer cuts into more than 341 distinct tokens (1024 clauses
#: over three fields), where a count of word runs saw one term or none: Han ideographs,
#: Hiragana, emoji, Latin letters between Katakana words, Hangul syllables between letters
#: newer than the engine's Unicode tables
PER_CHARACTER = {
    "han": "".join(chr(0x4E00 + i) for i in range(1000)),
    "hiragana": "".join(chr(0x3041 + i % 86) + chr(0x4E00 + i) for i in range(500)),
    "emoji": "".join(chr(0x1F300 + i) for i in range(1000)),
    "mixed": " ".join(f"w{i}" + chr(0x4E00 + i) + chr(0x1F600 + i % 80) for i in range(333)),
    "katakana": "".join(
        chr(0x62 + i % 25) + chr(0x30A1 + i % 90) + chr(0x30A1 + i // 90) for i in range(333)
    ),
    "unknown": "".join(chr(0xAC00 + i) + "\u0d04" for i in range(500)),  # U+0D04: Unicode 13
}


@pytest.mark.parametrize("name", sorted(PER_CHARACTER))
async def test_per_character_scripts_are_clipped_below_the_clause_limit(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]], name: str
) -> None:
    # the API's longest query (1000 characters): the lexical sources answer, no
    # too_many_nested_clauses from 1000 tokens in three fields
    text = PER_CHARACTER[name][:1000]
    cs = await generate_candidates(
        query_os, query_settings, CandidateRequest(surface="search", k=5, query_text=text, now=NOW)
    )
    assert not cs.errors, cs.errors


async def test_cold_start_user_gets_results_steered_by_interests(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    plain = await generate_candidates(
        query_os, query_settings, CandidateRequest(surface="cold_start", k=20, now=NOW)
    )
    assert len(plain.candidates) == 20 and set(plain.rendered["sources"]) == {"trending", "fresh"}
    steered = await generate_candidates(
        query_os,
        query_settings,
        CandidateRequest(surface="cold_start", k=20, interests=["space"], now=NOW),
    )
    assert "lexical" in steered.rendered["sources"]
    share = sum("space" in (c.item.get("tags") or []) for c in steered.candidates)
    base = sum("space" in (c.item.get("tags") or []) for c in plain.candidates)
    assert share >= 10 and share > base
    explore = [c for c in steered.candidates if c.explore]
    assert len(explore) <= 4  # 20% budget of 20 slots
    assert all("fresh" in c.sources for c in explore)


async def test_two_sided_eligibility(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    viewer = {
        "gender": "f",
        "age": 30,
        "pref_genders": ["m", "x"],
        "pref_age_min": 25,
        "pref_age_max": 45,
    }

    def mutual(d: dict[str, Any]) -> bool:
        return (
            "f" in d["pref_genders"]
            and d["pref_age_min"] <= 30 <= d["pref_age_max"]
            and d["gender"] in ("m", "x")
            and 25 <= d["age"] <= 45
        )

    profiles = [d for d in query_catalogue if d["kind"] == "profile" and d["available"]]
    fits = {d["id"] for d in profiles if mutual(d)}
    assert fits and len(fits) < len(profiles)  # the fixture has both kinds
    cs = await generate_candidates(
        query_os,
        query_settings,
        CandidateRequest(
            surface="trending", k=300, viewer=viewer, params={"kinds": ["profile"]}, now=NOW
        ),
    )
    assert set(cs.ids) == fits


def _viewers() -> list[dict[str, Any]]:
    """Seeded members (genders known and not, ages across the domain and past it, bounds at
    its edges and inverted) and odd stored ones."""
    rng = random.Random(5)
    out: list[dict[str, Any]] = []
    for _ in range(60):
        v: dict[str, Any] = {
            "gender": rng.choice(["f", "m", "x", "nb", None]),
            "age": rng.choice([None, 0, 18, 25, 30, 44, 60, 150, rng.randint(18, 70)]),
        }
        if rng.random() < 0.7:
            v["pref_genders"] = rng.sample(["f", "m", "x", "zz"], rng.randint(0, 3))
        if rng.random() < 0.7:
            v["pref_age_min"] = rng.choice([0, 18, 25, 30, 40, 60, 151, -3])
        if rng.random() < 0.7:
            v["pref_age_max"] = rng.choice([0, 18, 25, 30, 45, 60, 150, 200])
        out.append(v)
    return [
        *out,
        {"gender": "f", "age": 30, "pref_genders": ["m" * 65]},  # longer than the parameter
        {"gender": "f", "age": 30, "pref_age_min": 40, "pref_age_max": 20},
        {"gender": "f" * 65, "age": 30},
        {"gender": "f", "age": 151},
        {"gender": "", "age": -1},
        {"gender": "f", "age": 30.0, "pref_genders": "m", "pref_age_min": 1e300},
        {"gender": 5, "age": "30", "pref_age_max": 30.5},
    ]


async def test_the_engine_admits_whom_the_hard_rules_admit(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    """The templates' eligibility fragment with :meth:`HardRules.engine_params` admits the
    profiles :meth:`HardRules.eligible` admits, no more, no fewer (one definition; the filters
    stage and the page's re-check only catch what the engine's copy trails). A viewer stating
    only genders longer than the parameter takes was read as stating none (every gender)."""
    profiles = {d["id"]: d for d in query_catalogue if d["kind"] == "profile" and d["available"]}
    for n, viewer in enumerate(_viewers()):
        rules = HardRules.for_member(f"viewer{n}", viewer, None, None)
        params = {**rules.engine_params(), "kinds": ["profile"]}
        req = CandidateRequest(surface="trending", k=1000, params=params, now=NOW)
        cs = await generate_candidates(query_os, query_settings, req)
        assert not cs.errors, (viewer, cs.errors)
        eligible = {i for i, d in profiles.items() if rules.eligible(d)}
        assert set(cs.ids) == eligible, (viewer, set(cs.ids) ^ eligible)


async def test_similar_excludes_the_anchor_and_reports_sources(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    anchor = next(d for d in query_catalogue if d.get("category") == "chess" and d["available"])
    cs = await generate_candidates(
        query_os,
        query_settings,
        CandidateRequest(surface="similar", k=10, item_id=anchor["id"], now=NOW, explain=True),
    )
    assert anchor["id"] not in cs.ids
    assert set(cs.rendered["sources"]) == {"semantic", "lexical", "behaviour"}
    top = cs.candidates[0]
    assert top.item["category"] == "chess"
    assert top.sources and set(top.sources) == set(top.ranks)
    assert all(c.explanations for c in cs.candidates)
    comp = next(iter(top.explanations.values()))
    assert comp[0]["depth"] == 0 and comp[0]["value"] == pytest.approx(
        top.sources[next(iter(top.explanations))], rel=1e-4
    )
    with pytest.raises(NotFound):
        await generate_candidates(
            query_os, query_settings, CandidateRequest(surface="similar", item_id="nope", now=NOW)
        )


async def test_graph_popularity_damping_favours_less_exposed_neighbours(
    query_os: Any, query_settings: Settings, query_catalogue: list[dict[str, Any]]
) -> None:
    movies = sorted(
        (d for d in query_catalogue if d.get("kind") == "movie" and d.get("available")),
        key=lambda d: d["popularity"],
    )
    quiet, popular = movies[0], movies[-1]
    assert popular["popularity"] > 10 * (1 + quiet["popularity"])
    scores = {}
    for alpha in (0.0, 1.0):
        req = CandidateRequest(
            surface="for_you",
            k=10,
            now=NOW,
            exposure_caps=False,
            params={
                "graph_ids": [popular["id"], quiet["id"]],
                "graph_weights": [2.0, 1.0],
                "graph_pop_alpha": alpha,
            },
        )
        cs = await generate_candidates(query_os, query_settings, req)
        got = {c.id: c for c in cs.candidates if "graph" in c.sources}
        assert set(got) == {popular["id"], quiet["id"]}, cs.errors
        scores[alpha] = {i: c.sources["graph"] for i, c in got.items()}
        ranks = {i: c.ranks["graph"] for i, c in got.items()}
        first = popular["id"] if alpha == 0 else quiet["id"]
        assert ranks[first] == 1, (alpha, scores[alpha])
    assert scores[0.0][popular["id"]] == pytest.approx(2.0)
    assert scores[1.0][quiet["id"]] == pytest.approx(1.0 / (1 + quiet["popularity"]), rel=1e-4)
