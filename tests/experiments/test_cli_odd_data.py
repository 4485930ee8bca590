"""``opendisco experiments`` on odd data, on the real servers: a readout or a clear error
(exit 2), never a traceback nor a failure after the work.

Before: a draft's report raised ValueError (a traceback); a readout with an estimate there is
none of (no outcome in the control arm: its relative effect is NaN; one cluster; one arm
exposed) failed with ``StoreBackendError: storing the report failed: connection closed``
(FerretDB closes the connection on a NaN); a two-sided experiment whose logged lists did not
name their candidates' arms failed its SRM check (``ValueError: 'list' argument must have no
negative elements``); an ``--out`` under a file failed with NotADirectoryError after the
analysis. One stored experiment this version cannot read (hand-edited, or stored under older
rules) failed every ``list``, ``start`` and registry refresh with a pydantic ValidationError
traceback, and could not be stopped."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from opendisco import Settings, clients
from opendisco.cli._experiments import _run
from opendisco.cli.main import cli
from opendisco.experiments import Experiment, ExperimentRegistry, ExperimentStore, install
from opendisco.experiments._log import EXPOSURES
from opendisco.experiments._report import REPORTS
from opendisco.serving import Artifacts, Discovery

#: ``call(db)`` on its own loop, as the CLI runs it (the CLI runs ``asyncio.run``: the tests
#: are not async)
_on_db = _run


@pytest.fixture(autouse=True)
def _stop_ours(ex_settings: Settings) -> Iterator[None]:
    """Stops this file's experiments after each test (the other tests of the database
    assume that no experiment of another test runs)."""
    yield

    async def stop(db: Any) -> None:
        store = ExperimentStore(db)
        for e in await store.running():
            if e.id.startswith("odd"):
                await store.stop(e.id)

    _on_db(ex_settings, stop)


ARMS = [{"name": "control"}, {"name": "boost", "rerank": {"weights": {"popularity": 2.0}}}]


async def _started(db: Any, kind: str = "user") -> Experiment:
    uid = uuid.uuid4().hex[:8]
    exp = Experiment.model_validate(
        {"id": f"odd{uid}", "layer": f"L{uid}", "arms": ARMS, "design": {"kind": kind}}
    )
    store = ExperimentStore(db)
    await store.create(exp)
    return await store.start(exp.id)


async def _log(db: Any, exp: Experiment, lists: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Exposure documents as serving writes them: (viewer, arm, extra record fields)."""
    await db[EXPOSURES].insert_many(
        [
            {
                "_id": uuid.uuid4().hex,
                "at": datetime.now(UTC),
                "viewer": viewer,
                "surface": "for_you",
                "version": "v",
                "degraded": False,
                "experiments": [
                    {"experiment": exp.id, "design": exp.design.kind.value, "arm": arm}
                    | {"unit": viewer}
                    | extra
                ],
                "items": [
                    {"id": f"p-{viewer}-{j}", "owner": f"m-{viewer}-{j}", "position": j}
                    for j in range(3)
                ],
            }
            for viewer, arm, extra in lists
        ]
    )


def _report(settings: Settings, exp_id: str, out: Path) -> Any:
    return CliRunner().invoke(
        cli,
        ["experiments", "report", exp_id, "--out", str(out), "--bootstrap", "20"],
        obj=settings,
    )


def test_a_drafts_report_is_a_usage_error(ex_settings: Settings, tmp_path: Path) -> None:
    uid = uuid.uuid4().hex[:8]
    exp = Experiment.model_validate({"id": f"odd{uid}", "layer": f"L{uid}", "arms": ARMS})
    _on_db(ex_settings, lambda db: ExperimentStore(db).create(exp))
    out = _report(ex_settings, exp.id, tmp_path)
    assert out.exit_code == 2, (out.output, out.exception)
    assert "never started" in out.output


def test_readouts_without_an_estimate_are_stored(ex_settings: Settings, tmp_path: Path) -> None:
    """No outcome at all (relative effects NaN), one arm exposed, one viewer per arm (no
    residual: the regression divided by zero), one cluster: a readout
    (blocked or not), report.json strict JSON with null where there is no estimate, and the
    readout stored."""
    cases = {
        "no-outcomes": ("user", [(f"v{i}", ARMS[i % 2]["name"], {}) for i in range(20)]),
        "one-arm": ("user", [(f"v{i}", "control", {}) for i in range(20)]),
        "one-viewer-each": ("user", [("v0", "control", {}), ("v1", "boost", {})]),
        "one-cluster": ("cluster", [(f"v{i}", "boost", {"cluster": "c0"}) for i in range(20)]),
    }
    for name, (kind, lists) in cases.items():
        exp = _on_db(ex_settings, lambda db, kind=kind: _started(db, kind))
        _on_db(ex_settings, lambda db, exp=exp, lists=lists: _log(db, exp, lists))
        out = _report(ex_settings, exp.id, tmp_path / name)
        assert out.exit_code == 0, (name, out.output, out.exception)
        text = (tmp_path / name / "report.json").read_text()
        assert "NaN" not in text and "Infinity" not in text, name
        report = json.loads(text)
        assert report["estimates"] and any(e["relative"] is None for e in report["estimates"])
        stored = _on_db(
            ex_settings, lambda db, exp=exp: db[REPORTS].find_one({"experiment": exp.id})
        )
        assert stored is not None and stored["design"] == kind, name


def test_two_sided_lists_without_candidate_arms_are_read_out(
    ex_settings: Settings, tmp_path: Path
) -> None:
    """Lists logged without their candidates' arms (the process's registry no longer held the
    experiment) get the arm serving gives each candidate: the candidate-side SRM check counts
    them instead of failing."""

    async def setup(db: Any) -> Experiment:
        store = ExperimentStore(db)
        for e in await store.running():  # one pair-level experiment at a time: another test's
            if e.pair_level:
                await store.stop(e.id)
        exp = await _started(db, "two_sided")
        await _log(db, exp, [(f"v{i}", ARMS[i % 2]["name"], {}) for i in range(40)])
        return exp

    exp = _on_db(ex_settings, setup)
    out = _report(ex_settings, exp.id, tmp_path / "ts")
    assert out.exit_code == 0, (out.output, out.exception)
    report = json.loads((tmp_path / "ts" / "report.json").read_text())
    check = next(c for c in report["srm"] if c["name"] == "candidate exposures")
    assert sum(check["counts"]) == 20 * 3  # every candidate of the control viewers' lists


def test_an_out_dir_that_cannot_be_made_is_refused_up_front(
    ex_settings: Settings, tmp_path: Path
) -> None:
    exp = _on_db(ex_settings, _started)
    _on_db(
        ex_settings,
        lambda db: _log(db, exp, [(f"v{i}", ARMS[i % 2]["name"], {}) for i in range(10)]),
    )
    (tmp_path / "afile").write_text("x")
    out = _report(ex_settings, exp.id, tmp_path / "afile" / "sub")
    assert out.exit_code == 2, (out.output, out.exception)
    assert "--out" in out.output
    assert _on_db(ex_settings, lambda db: db[REPORTS].find_one({"experiment": exp.id})) is None


def test_an_unreadable_experiment_is_listed_apart_keeps_its_range_and_stops(
    ex_settings: Settings,
) -> None:
    uid = uuid.uuid4().hex[:8]
    layer, bad_id = f"L{uid}", f"old{uid}"
    good = Experiment.model_validate(
        {"id": f"odd{uid}", "layer": layer, "traffic": 0.6, "arms": ARMS}
    )

    async def setup(db: Any) -> None:
        await db["experiments"].insert_one(
            {  # running, with a metric this version does not know
                "_id": bad_id,
                "arms": ARMS,
                "metrics": ["revenue"],
                "status": "running",
                "layer": layer,
                "traffic": 0.6,
                "offset": 0,
            }
        )
        await ExperimentStore(db).create(good)

    _on_db(ex_settings, setup)
    runner = CliRunner()
    out = runner.invoke(cli, ["experiments", "list"], obj=ex_settings)
    assert out.exit_code == 0, (out.output, out.exception)
    assert f"{good.id} [draft]" in out.output
    assert f"unreadable: experiment {bad_id!r} is stored in a form" in out.output
    assert "unknown metric(s) ['revenue']" in out.output

    async def refreshed(db: Any) -> list[str]:
        registry = ExperimentRegistry(ExperimentStore(db), Artifacts())
        return [r.experiment.id for r in await registry.refresh()]

    assert bad_id not in _on_db(ex_settings, refreshed)  # not served, the others are
    # its range is still taken: 60% + 60% of one layer do not fit
    out = runner.invoke(cli, ["experiments", "start", good.id], obj=ex_settings)
    assert out.exit_code == 2 and "has no free 60.0%" in out.output, (out.output, out.exception)
    out = runner.invoke(cli, ["experiments", "report", bad_id], obj=ex_settings)
    assert out.exit_code == 2 and "cannot read" in out.output, (out.output, out.exception)
    out = runner.invoke(cli, ["experiments", "stop", bad_id], obj=ex_settings)
    assert out.exit_code == 0 and f"stopped {bad_id}" in out.output, (out.output, out.exception)
    out = runner.invoke(cli, ["experiments", "start", good.id], obj=ex_settings)
    assert out.exit_code == 0 and "buckets 0..5999" in out.output, (out.output, out.exception)


def test_a_member_whose_location_is_no_place_is_served_in_a_switchback(
    ex_settings: Settings, ex_market: Any, model: Any, tmp_path: Path
) -> None:
    """A member whose stored location is not coordinates (``{"lat": "north"}``) is in the
    "unknown" region: before, float("north") failed the stratified switchback's start (its
    snapshot reads every member's region) and, while one ran, every request of that member."""
    _, users = ex_market
    member = users[3]["_id"]
    uid = uuid.uuid4().hex[:8]
    exp = Experiment.model_validate(
        {
            "id": f"odd{uid}",
            "layer": f"L{uid}",
            "arms": ARMS,
            "design": {"kind": "switchback", "strata": 4},
        }
    )
    location = users[3].get("location")
    _on_db(ex_settings, lambda db: ExperimentStore(db).create(exp))

    def set_location(value: Any) -> Any:
        return _on_db(
            ex_settings,
            lambda db: db["users"].update_one({"_id": member}, {"$set": {"location": value}}),
        )

    set_location({"lat": "north", "lon": 0})
    try:
        out = CliRunner().invoke(cli, ["experiments", "start", exp.id], obj=ex_settings)
        assert out.exit_code == 0, (out.output, out.exception)

        async def served(db: Any) -> Any:
            os_client = clients.async_opensearch(ex_settings)
            try:
                disc = Discovery(ex_settings, os_client, db, model=model)
                registry, log = install(disc, db, ex_settings)
                await registry.refresh()
                recs = await disc.recommend(member, k=5)
                await log.drain()
                await disc.drain()
                return recs
            finally:
                await os_client.close()

        recs = _on_db(ex_settings, served)
        assert not recs.degraded and recs.items
        mine = [e for e in recs.experiments if e.get("experiment") == exp.id]
        assert mine and mine[0]["unit"].startswith("switchback:unknown:"), recs.experiments
        out = _report(ex_settings, exp.id, tmp_path / "sw")
        assert out.exit_code == 0, (out.output, out.exception)
    finally:
        set_location(location)


def test_exposure_documents_other_code_wrote_are_skipped(
    ex_settings: Settings, tmp_path: Path
) -> None:
    """Exposure documents of the experiment that are not what the exposure log writes (no
    time, no viewer, an item without id, a record without arm) are skipped; the readout is of
    the others. Before: KeyError / AttributeError tracebacks."""
    exp = _on_db(ex_settings, _started)
    lists = [(f"v{i}", ARMS[i % 2]["name"], {}) for i in range(20)]
    _on_db(ex_settings, lambda db: _log(db, exp, lists))
    rec = {"experiment": exp.id, "design": "user", "arm": "control", "unit": "v1"}
    now = datetime.now(UTC)
    odd = [
        {"_id": "no-at", "viewer": "v1", "experiments": [rec], "items": []},
        {"_id": "str-at", "at": "now", "viewer": "v1", "experiments": [rec], "items": []},
        {"_id": "no-viewer", "at": now, "experiments": [rec], "items": [{"id": "p"}]},
        {"_id": "no-id", "at": now, "viewer": "v1", "experiments": [rec], "items": [{"x": 1}]},
        {"_id": "items", "at": now, "viewer": "v1", "experiments": [rec], "items": "p1"},
        {"_id": "no-arm", "at": now, "viewer": "v1", "experiments": [{"experiment": exp.id}]},
        {"_id": "recs", "at": now, "viewer": "v1", "experiments": "x", "items": []},
    ]
    _on_db(
        ex_settings,
        lambda db: db[EXPOSURES].insert_many([{**d, "_id": f"{exp.id}-{d['_id']}"} for d in odd]),
    )
    try:
        out = _report(ex_settings, exp.id, tmp_path / "odd")
        assert out.exit_code == 0, (out.output, out.exception)
        report = json.loads((tmp_path / "odd" / "report.json").read_text())
        viewer_side = {r["arm"]: r for r in report["sides"]["viewer"]}
        assert sum(r["impressions"] for r in viewer_side.values()) == 20 * 3
    finally:  # the other tests of the database read every exposure document
        ids = [f"{exp.id}-{d['_id']}" for d in odd]
        _on_db(ex_settings, lambda db: db[EXPOSURES].delete_many({"_id": {"$in": ids}}))


def test_lists_under_an_arm_the_experiment_lacks_are_left_out(
    ex_settings: Settings, tmp_path: Path
) -> None:
    """Exposure lists that name an arm the experiment does not have (its document edited:
    an arm renamed while running) are left out and counted; before, read as arm -1 they
    failed the report with a ValueError traceback (``np.bincount`` in the SRM check). An
    estimate without an interval says why instead of printing one."""
    exp = _on_db(ex_settings, lambda db: _started(db, "user"))
    lists = [(f"v{i}", ARMS[i % 2]["name"], {}) for i in range(20)] + [("vx", "renamed", {})]
    _on_db(ex_settings, lambda db: _log(db, exp, lists))
    out = _report(ex_settings, exp.id, tmp_path / "r")
    assert out.exit_code == 0, (out.output, out.exception)
    assert "left out: 3 shown items" in out.output
    # no like at all: the outcome does not vary, so no interval is printed or stored
    assert "does not vary within the arms" in out.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["estimates"][0]["ci"] == [None, None]
    assert sum(report["srm"][-1]["counts"]) == 20


def test_likes_back_after_the_stop_are_not_the_experiments_outcome(
    ex_settings: Settings, tmp_path: Path
) -> None:
    """Every viewer liked its first shown member during the run; half of those members
    liked back before the stop, half after it. The readout counts the first half's mutual
    likes only — as it counts a match only before the stop. Before, a report run after the
    stop counted all (and grew with every like back arriving after it)."""
    uid = uuid.uuid4().hex[:6]
    viewers = [f"w{uid}{i}" for i in range(20)]

    async def setup(db: Any) -> Experiment:
        exp = await _started(db, "user")
        await _log(db, exp, [(v, ARMS[i % 2]["name"], {}) for i, v in enumerate(viewers)])
        now = datetime.now(UTC)
        await db["events"].insert_many(
            [{"type": "like", "user_id": v, "item_id": f"p-{v}-0", "ts": now} for v in viewers]
        )
        back = [{"src": f"m-{v}-0", "dst": v} for v in viewers]
        await db["user_likes"].insert_many([{**d, "at": now} for d in back[::2]])
        await ExperimentStore(db).stop(exp.id)
        later = datetime.now(UTC) + timedelta(hours=1)
        await db["user_likes"].insert_many([{**d, "at": later} for d in back[1::2]])
        return exp

    exp = _on_db(ex_settings, setup)
    out = _report(ex_settings, exp.id, tmp_path / "m")
    assert out.exit_code == 0, (out.output, out.exception)
    sides = json.loads((tmp_path / "m" / "report.json").read_text())["sides"]["viewer"]
    assert [s["likes"] for s in sides] == [10, 10]
    assert sum(s["mutual"] for s in sides) == 10
