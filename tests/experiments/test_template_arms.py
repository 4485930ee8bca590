"""Arms that serve a template version file: served for their surface only, always guarded
(the shipped hard filter wraps every query, the request-set parameters stay declared), refused
at creation when the file cannot be served that way, and never in a pair-level design."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from opendisco import Settings
from opendisco._exceptions import ConfigError, InvalidInput
from opendisco.cli._experiments import _load
from opendisco.experiments import Experiment, ExperimentStore, install
from opendisco.experiments._serving import arm_artifacts, check_arm_files
from opendisco.queries import example_params, load, render
from opendisco.serving import Artifacts, Discovery


def _version_file(tmp_path: Path, surface: str, raw: object, n: int = 2) -> Path:
    path = tmp_path / f"template-{surface}-v{n}.json"
    path.write_text(json.dumps({"surface": surface, "version": n, "template": raw}))
    return path


def _filterless(surface: str) -> dict:
    """The shipped template with its hard filter replaced by match_all (a careless edit)."""
    return json.loads(
        json.dumps(load(surface).raw).replace('{"$ref": "filter"}', '{"match_all": {}}')
    )


def _exp(tmp_path: Path, files: list[str], design: str = "user") -> Experiment:
    arms = [{"name": "control"}, {"name": "treatment", "templates": files}]
    return Experiment(id="tpl", arms=arms, design={"kind": design}, offset=0)


def test_the_arm_serves_its_template_version_under_the_hard_filter(tmp_path: Path) -> None:
    path = _version_file(tmp_path, "for_you", _filterless("for_you"))
    exp = _exp(tmp_path, [str(path)])
    base = Artifacts()
    control = arm_artifacts(base, exp, exp.arms[0])
    treated = arm_artifacts(base, exp, exp.arms[1])
    assert control is base and not control.templates
    tpl = treated.templates["for_you"]
    assert tpl.guarded and tpl.version.startswith(path.stem + "@")
    assert path.stem in treated.name  # named in every response's version string
    assert set(treated.templates) == {"for_you"}  # other surfaces: the served template
    params = example_params("for_you", Settings())
    for body in render("for_you", params, tpl)["sources"].values():
        hard = json.dumps(body["query"]["bool"]["filter"])
        # the request's exclusions and the viewer's preferences, whatever the draft dropped
        assert "__none__" in hard and "pref_genders" in hard and "_capped" in hard


def test_a_file_that_cannot_be_served_guarded_is_refused_at_creation(tmp_path: Path) -> None:
    dropped = _version_file(tmp_path, "for_you", {"sources": {"a": {"body": {}}}}, n=3)
    missing = tmp_path / "template-for_you-v9.json"
    for path in (dropped, missing):
        with pytest.raises(ConfigError):
            check_arm_files(_exp(tmp_path, [str(path)]))
        spec = tmp_path / "exp.json"
        spec.write_text(json.dumps(_exp(tmp_path, [str(path)]).model_dump(mode="json")))
        with pytest.raises(InvalidInput, match="template"):
            _load(spec)  # `opendisco experiments create` refuses it: nothing is stored
    good = _version_file(tmp_path, "trending", load("trending").raw, n=4)
    spec = tmp_path / "ok.json"
    spec.write_text(json.dumps(_exp(tmp_path, [str(good)]).model_dump(mode="json")))
    assert _load(spec).arms[1].templates == [str(good)]


def test_an_arm_with_two_templates_of_one_surface_is_refused_at_creation(
    tmp_path: Path,
) -> None:
    """As ``template_files`` refuses two of one surface; before, the arm served the later one
    and the earlier was never used, silently."""
    files = [str(_version_file(tmp_path, "for_you", load("for_you").raw, n=n)) for n in (2, 3)]
    spec = tmp_path / "two.json"
    spec.write_text(json.dumps(_exp(tmp_path, files).model_dump(mode="json")))
    with pytest.raises(InvalidInput, match="two templates of one surface"):
        _load(spec)


@pytest.mark.parametrize("design", ["item", "two_sided"])
def test_pair_level_designs_refuse_template_arms(tmp_path: Path, design: str) -> None:
    path = _version_file(tmp_path, "for_you", load("for_you").raw)
    with pytest.raises(ValidationError, match="templates"):
        _exp(tmp_path, [str(path)], design)


def test_arm_files_are_stored_as_found_at_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative arm path was stored as written, so the API read it from its own working
    directory: the file was not found there and the experiment was not served."""
    good = _version_file(tmp_path, "trending", load("trending").raw, n=4)
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "rel.json"
    spec.write_text(json.dumps(_exp(tmp_path, [good.name]).model_dump(mode="json")))
    stored = _load(spec)
    assert stored.arms[1].templates == [str(good)] and stored.arms[0].model is None


def _without(surface: str, sources: dict[str, list[str]]) -> dict:
    """The shipped template less some sources and the parameters only they read."""
    raw = copy.deepcopy(load(surface).raw)
    for source, params in sources.items():
        raw["sources"].pop(source)
        raw["fusion"]["weights"].pop(source)
        for name in params:
            raw["params"].pop(name)
    return raw


async def test_a_template_arm_without_the_market_sources_serves_its_members(
    ex_discovery: Discovery, ex_db: Any, ex_settings: Settings, ex_market: Any, tmp_path: Path
) -> None:
    """A promoted for_you version that dropped the likers and trending sources (and the
    parameters only they read): the market hydrators handed every treated request the
    parameters the *shipped* template declares (liker_ids, trending_ids), and the request
    failed with TemplateParamError — a 422 on every for_you read of a treated member with a
    liker or while anything trended (control members were served). Now each hydrator asks
    the request's own template."""
    _, users = ex_market
    dropped = {
        "likers": ["liker_ids", "w_likers"],
        "trending": ["trending_ids", "trending_weights", "w_live", "w_trending"],
    }
    path = _version_file(tmp_path, "for_you", _without("for_you", dropped), n=5)
    exp = Experiment(
        id=f"tplmk{uuid.uuid4().hex[:6]}",
        layer=f"L{uuid.uuid4().hex[:6]}",
        arms=[{"name": "control"}, {"name": "treatment", "templates": [str(path)]}],
    )
    store = ExperimentStore(ex_db)
    exp = await store.start((await store.create(exp)).id)
    try:
        registry, _ = install(ex_discovery, ex_db, ex_settings, log=False)
        await registry.refresh()
        viewers = users[40:100]
        tag = uuid.uuid4().hex[:6]
        events = []
        for i, u in enumerate(viewers):  # a history (for_you) and a liker (the likers source)
            liker = viewers[(i + 1) % len(viewers)]
            events += [
                {"id": f"h{tag}{i}", "type": "like", "user_id": u["_id"], "item_id": "p0"},
                {"id": f"l{tag}{i}", "type": "like", "user_id": liker["_id"],
                 "item_id": u["profile_id"]},
            ]  # fmt: skip
        res = await ex_discovery.record_events(events)
        assert not res.rejected, res.rejected
        arms = []
        for u in viewers:
            recs = await ex_discovery.recommend(u["_id"], k=10)
            rec = next(r for r in recs.experiments if r["experiment"] == exp.id)
            arms.append(rec["arm"])
            assert recs.surface == "for_you" and recs.ids, u["_id"]
            assert (path.stem in recs.version) == (rec["arm"] == "treatment")
        assert {"control", "treatment"} <= set(arms)
    finally:
        await store.stop(exp.id)
