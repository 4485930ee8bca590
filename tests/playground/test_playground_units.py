"""Pure pieces behind the playground (no servers): guarded template rendering, the params
document check, position changes, and the paired difference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from opendisco import Settings
from opendisco._exceptions import InvalidInput, TemplateParamError
from opendisco.api.playground import changes
from opendisco.eval import ModelResult, paired_difference
from opendisco.queries import example_params, load, render, template_from_doc
from opendisco.serving import Artifacts, check_params


def _filterless(surface: str) -> dict:
    return json.loads(
        json.dumps(load(surface).raw).replace('{"$ref": "filter"}', '{"match_all": {}}')
    )


@pytest.mark.parametrize("surface", ["for_you", "cold_start", "trending"])
def test_every_source_of_a_draft_renders_under_the_shipped_hard_filter(surface: str) -> None:
    params = example_params(surface, Settings())
    shipped = render(surface, params)
    hard = render(surface, params, template_from_doc(surface, _filterless(surface)))
    assert set(hard["sources"]) == set(shipped["sources"])
    for body in hard["sources"].values():
        bool_q = body["query"]["bool"]
        assert len(bool_q["filter"]) == 1
        # the shipped filter, rendered with the request's values: exclusions and eligibility
        text = json.dumps(bool_q["filter"][0])
        assert '"exclude_ids"' not in text and "__none__" in text  # the values, filled in
        assert "pref_genders" in text and "_capped" in text
        assert "pref_genders" not in json.dumps(bool_q["must"])  # the draft itself dropped it


def test_a_draft_identical_to_the_shipped_template_scores_the_same() -> None:
    params = example_params("for_you", Settings())
    shipped = render("for_you", params)
    same = render("for_you", params, template_from_doc("for_you", load("for_you").raw))
    for name, body in same["sources"].items():
        assert body["query"]["bool"]["must"] == [shipped["sources"][name]["query"]]
    assert same["fusion"] == shipped["fusion"]
    assert same["version"].startswith("for_you-draft@")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ([], "JSON object"),
        ({"sources": {"a": {"body": {}}}, "extra": 1}, "unknown keys ['extra']"),
        ({"sources": {"a": {"requires": "x", "body": {}}}}, "'requires' must be a list"),
        ({"sources": {"a": {"body": {"size": {"$if": "k"}}}}}, "$if takes exactly 'then'"),
        ({"params": {"w": {"type": "complex"}}, "sources": {"a": {"body": {}}}}, "unknown type"),
        ({"sources": {"a": {"body": {}}}}, "must declare"),
    ],
)
def test_a_bad_template_document_names_the_problem(raw: object, needle: str) -> None:
    with pytest.raises(TemplateParamError, match=None) as err:
        template_from_doc("for_you", raw)
    assert needle in str(err.value)


def _edited(path: str, value: object) -> dict:
    """The shipped cold_start document with ``value`` at ``path`` (keys joined by '/')."""
    raw = json.loads(json.dumps(load("cold_start").raw))
    node = raw
    *parents, last = path.split("/")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("sources/trending/body/size", {"$param": ["k"]}, "names undeclared parameter"),
        ("sources/trending/body/size", {"$param": {"k": 1}}, "names undeclared parameter"),
        ("sources/trending/body/_source", {"$ref": ["source_fields"]}, "unknown fragment"),
        ("sources/trending/body/x", {"$if": ["k"], "then": 1}, "names undeclared parameter"),
        ("params/zz", {"type": "int", "min": "abc", "nullable": True}, "min must be a number"),
        ("params/zz", {"type": "text", "max_terms": "x", "default": ""}, "max_terms must be"),
        ("params/zz", {"type": "str", "choices": 5}, "choices must be a list"),
        ("fusion/rank_constant", "abc", "rank_constant must be a number"),
        ("fusion/rank_constant", -1, "rank_constant must be a number"),
        ("fusion/weights", [1, 2], "weights must map sources to numbers"),
        ("fusion/weights", {"trending": "x"}, "weights must map sources to numbers"),
        ("fusion/explore_share", "x", "explore_share must be within 0..1"),
        ("fusion/explore_share", 1e308, "explore_share must be within 0..1"),
        ("fusion/explore_source", ["fresh"], "explore_source must name a source"),
        ("sources/trending/body/min_score", float("nan"), "not finite"),  # sent to the engine
        ("sources/trending/body/x", [1, {"y": float("-inf")}], "not finite"),
        ("fusion", {"$param": "k"}, "'fusion' must be an object"),  # AttributeError
        # a date that leaves datetime's range once in UTC: an OverflowError
        ("params/zz", {"type": "date", "default": "9999-12-31T23:30:00-05:00"}, "out of range"),
        ("params/zz", {"type": "date", "default": "0001-01-01T00:00:00+01:00"}, "out of range"),
        ("fusion", {"$if": "location", "then": {}}, "'fusion' must be an object"),
        # the parameters every request sets keep their shipped declarations: a text type would
        # clip the viewer's id to its first word, the self-exclusion would match nobody
        ("params/viewer_id", {"type": "text", "max_terms": 1, "nullable": True}, "redeclares"),
        ("params/viewer_gender_unknown", {"type": "bool", "default": True}, "redeclares"),
        ("params/exclude_ids", {"type": "str_list", "max_items": 5}, "redeclares"),
    ],
)
def test_a_malformed_template_draft_is_an_input_error(
    path: str, value: object, needle: str
) -> None:
    """Each of these was an unhandled TypeError/ValueError/ZeroDivisionError/OverflowError
    (HTTP 500 on the playground's validate/compare) or, for the redeclarations, accepted."""
    from opendisco.api.playground._drafts import draft_artifacts

    with pytest.raises(InvalidInput) as err:
        draft_artifacts(
            Settings(), Artifacts(), "template", "cold_start", _edited(path, value), "d"
        )
    assert needle in str(err.value), err.value


def test_the_params_check_refuses_request_parameters_and_bad_values() -> None:
    tparams, config = check_params(
        {"template_params": {"w_semantic": 2.0, "cold_start": {"w_quality": 0.5}}, "rerank": {}}
    )
    assert tparams["w_semantic"] == 2.0 and config.weights["fused"] == 1.0
    for doc, needle in (
        ({"template_params": {"index": "someone-elses"}}, "cannot be overridden"),
        ({"template_params": {"trending": {"exposure_index": None}}}, "cannot be overridden"),
        ({"template_params": {"w_semantic": "high"}}, "expected a number"),
        ({"template_params": {"nope": 1}}, "no template declares"),
        ({"rerank": {"steps": ["score", "teleport"]}}, "teleport"),
        ({"template_params": []}, "must be an object"),
        ({"template_params": {"viewer_gender_unknown": False}}, "cannot be overridden"),
    ):
        with pytest.raises(InvalidInput) as err:
            check_params(doc)
        assert needle in str(err.value), (doc, err.value)
    named = Artifacts().with_params({"rerank": {"mmr_lambda": 0.5}}, "draft")
    assert named.params_name.startswith("draft@") and named.rerank.mmr_lambda == 0.5


def test_changes_report_moves_new_and_dropped() -> None:
    got = changes(["a", "b", "c", "d"], ["c", "a", "e", "b"])
    assert got["moves"]["c"] == {"from": 2, "to": 0, "moved": 2}
    assert got["moves"]["a"] == {"from": 0, "to": 1, "moved": -1}
    assert got["moves"]["e"] == {"from": None, "to": 2, "moved": None}
    assert got["dropped"] == ["d"] and got["changed"]
    assert not changes(["a", "b"], ["a", "b"])["changed"]


def test_the_paired_difference_is_the_standard_error_of_the_per_user_differences() -> None:
    rng = np.random.default_rng(3)
    a = rng.random(40)
    b = np.clip(a + rng.normal(0.05, 0.1, 40), 0, 1)
    ra = ModelResult("current", 40, {}, {}, per_user={"ndcg@10": a.tolist()})
    rb = ModelResult("draft", 40, {}, {}, per_user={"ndcg@10": b.tolist()})
    d = paired_difference(ra, rb, "ndcg@10")
    assert d.diff == pytest.approx(float((b - a).mean()))
    assert d.se == pytest.approx(float((b - a).std(ddof=1)) / math.sqrt(40))
    assert d.p_value == pytest.approx(float(stats.ttest_rel(b, a).pvalue))
    # pairing matters: the unpaired error of the same samples is larger here
    unpaired = math.sqrt(a.var(ddof=1) / 40 + b.var(ddof=1) / 40)
    assert d.se < unpaired
    with pytest.raises(InvalidInput):
        paired_difference(ra, ModelResult("x", 3, {}, {}), "ndcg@10")
