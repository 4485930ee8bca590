"""What operators feed the CLI, wrong: a clear one-line error and a usage exit code (2), never
a traceback. Each case below raised an unhandled exception before (TOMLDecodeError,
UnicodeDecodeError, RecursionError, OverflowError, SettingsError, pymongo's InvalidName), was
a backend error on first use (an index alias OpenSearch cannot name) or, for ``apikeys create
--rate nan``, reached the database, whose server closed the connection. No servers: every
case is refused before a backend is asked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from opendisco.cli.main import cli

DEEP = "[" * 20_000 + "]" * 20_000


def _files(tmp: Path) -> dict[str, Path]:
    out = {
        "bad.toml": b"keep_versions = [\n",
        "latin1.toml": b"index_alias = '\xe9t\xe9'\n",
        "binary.json": b"\xff\xfe{}",
        "deep.json": DEEP.encode(),
        "afile": b"a file where an output directory's parent should be",
    }
    paths = {}
    for name, data in out.items():
        paths[name] = tmp / name
        paths[name].write_bytes(data)
    arms = [{"name": "control"}, {"name": "t", "templates": [str(paths["binary.json"])]}]
    paths["arm.json"] = tmp / "arm.json"
    paths["arm.json"].write_text(json.dumps({"id": "x", "arms": arms}))
    paths["inf.json"] = tmp / "inf.json"
    paths["inf.json"].write_text(
        '{"id": "x", "arms": [{"name": "a", "weight": Infinity}, {"name": "b"}]}'
    )
    # NaN/infinity (Python's json writes and reads them): FerretDB refuses to store them (on a
    # NaN it closes the connection) and a NaN weight scores every candidate NaN
    nan_arm = {"name": "t", "rerank": {"weights": {"fused": math.nan}}}
    paths["nan-arm.json"] = tmp / "nan-arm.json"
    paths["nan-arm.json"].write_text(json.dumps({"id": "x", "arms": [{"name": "c"}, nan_arm]}))
    paths["surface.json"] = tmp / "surface.json"  # a misspelt surface: it would never apply
    paths["surface.json"].write_text(
        json.dumps({"id": "x", "arms": [{"name": "c"}, {"name": "t"}], "surfaces": ["foryou"]})
    )
    inf_design = {"kind": "cluster", "tsri_k": math.inf}
    paths["inf-design.json"] = tmp / "inf-design.json"
    paths["inf-design.json"].write_text(
        json.dumps({"id": "x", "design": inf_design, "arms": [{"name": "c"}, {"name": "t"}]})
    )
    # past what MongoDB stores (OverflowError traceback at create) or what a date can go back
    # (graph_days: OverflowError traceback at start); a region field FerretDB cannot project
    # (its start or report failed after the create)
    for name, design in (
        ("huge-days.json", {"kind": "cluster", "graph_days": 10**30}),
        ("far-days.json", {"kind": "cluster", "graph_days": 10**7}),
        ("huge-period.json", {"kind": "switchback", "period_minutes": 10**30}),
        # unbounded before: strata past 8-byte ints failed at create (OverflowError), a huge
        # tsri_k overflowed the readout to infinity, a resolution far from 1 made one cluster
        # of every member or one of each
        ("huge-strata.json", {"kind": "cluster", "strata": 10**30}),
        ("huge-tsri.json", {"kind": "two_sided", "tsri_k": 1e300}),
        ("huge-resolution.json", {"kind": "cluster", "resolution": 1e300}),
        ("tiny-resolution.json", {"kind": "cluster", "resolution": 1e-300}),
        ("region-op.json", {"kind": "switchback", "region_field": "$where"}),
        ("region-empty.json", {"kind": "switchback", "region_field": ""}),
    ):
        paths[name] = tmp / name
        paths[name].write_text(
            json.dumps({"id": "x", "design": design, "arms": [{"name": "c"}, {"name": "t"}]})
        )
    # read as something else before: "0.5" as 0.5, "30" as 30, true as 1; a traffic below
    # one bucket (5e-324) or between two (0.12345) as one bucket or 1234
    arms = [{"name": "c"}, {"name": "t"}]
    for name, fields in (
        ("str-traffic.json", {"traffic": "0.5"}),
        ("tiny-traffic.json", {"traffic": 5e-324}),
        ("part-bucket.json", {"traffic": 0.12345}),
        ("str-weight.json", {"arms": [{"name": "c", "weight": "2"}, {"name": "t"}]}),
        ("str-days.json", {"design": {"kind": "cluster", "graph_days": "30"}}),
        ("bool-strata.json", {"design": {"kind": "cluster", "strata": True}}),
    ):
        paths[name] = tmp / name
        paths[name].write_text(json.dumps({"id": "x", "arms": arms, **fields}))
    paths["nan-params.json"] = tmp / "nan-params.json"
    paths["nan-params.json"].write_text(json.dumps({"rerank": {"weights": {"fused": math.nan}}}))
    # the latest version in tune's --out, hand-edited into something else
    for name, text in (("tuned", "{cut short"), ("tuned-list", "[1]")):
        (tmp / name).mkdir()
        (tmp / name / "params-v1.json").write_text(text)
    return paths


CASES = [
    ({"OPENDISCO_CONFIG": "bad.toml"}, ["settings"], "bad.toml: not valid TOML"),
    ({"OPENDISCO_CONFIG": "latin1.toml"}, ["settings"], "latin1.toml: not valid TOML"),
    ({"OPENDISCO_TEMPLATE_FILES": "notjson"}, ["settings"], "OPENDISCO_TEMPLATE_FILES is not"),
    ({"OPENDISCO_KEEP_VERSIONS": "-1"}, ["settings"], "(OPENDISCO_KEEP_VERSIONS)"),
    ({"OPENDISCO_MONGO_DB": "bad/db"}, ["dead-letters"], "mongo_db (OPENDISCO_MONGO_DB)"),
    ({"OPENDISCO_ITEMS_COLLECTION": "$x"}, ["dead-letters"], "(OPENDISCO_ITEMS_COLLECTION)"),
    ({"OPENDISCO_INDEX_ALIAS": "Bad Name"}, ["verify"], "index_alias (OPENDISCO_INDEX_ALIAS)"),
    ({"OPENDISCO_PARAMS_FILE": "deep.json"}, ["recommend", "u1"], "not a JSON document"),
    ({"OPENDISCO_TEMPLATE_FILES": '["binary.json"]'}, ["recommend", "u1"], "not a JSON document"),
    ({"OPENDISCO_PARAMS_FILE": "deep.json"}, ["serve", "--port", "18779"], "not a JSON document"),
    ({}, ["eval", "run", "--dataset", "synthetic:20", "--namespace", "a/b"], "namespace 'a/b'"),
    ({}, ["tune", "--dataset", "synthetic:20", "--namespace", "A B"], "namespace 'A B'"),
    ({}, ["experiments", "create", "deep.json"], "maximum recursion depth"),
    ({}, ["experiments", "create", "arm.json"], "binary.json: not a JSON document"),
    ({}, ["experiments", "create", "inf.json"], "arms.0.weight: Input should be a finite"),
    ({}, ["experiments", "create", "nan-arm.json"], "weights.fused: Input should be a finite"),
    ({}, ["experiments", "create", "inf-design.json"], "design.tsri_k: Input should be a finite"),
    ({}, ["experiments", "create", "surface.json"], "unknown surface(s) ['foryou']"),
    ({}, ["experiments", "create", "huge-days.json"], "design.graph_days: Input should be less"),
    ({}, ["experiments", "create", "far-days.json"], "design.graph_days: Input should be less"),
    ({}, ["experiments", "create", "huge-period.json"], "design.period_minutes: Input should"),
    ({}, ["experiments", "create", "huge-strata.json"], "design.strata: Value error, must be"),
    ({}, ["experiments", "create", "huge-tsri.json"], "design.tsri_k: Value error, must"),
    ({}, ["experiments", "create", "huge-resolution.json"], "design.resolution: Value error"),
    ({}, ["experiments", "create", "tiny-resolution.json"], "design.resolution: Value error"),
    ({}, ["experiments", "create", "region-op.json"], "design.region_field: String should"),
    ({}, ["experiments", "create", "region-empty.json"], "design.region_field: String should"),
    ({}, ["experiments", "create", "str-traffic.json"], "traffic: Input should be a valid num"),
    ({}, ["experiments", "create", "tiny-traffic.json"], "traffic: Input should be greater"),
    ({}, ["experiments", "create", "part-bucket.json"], "give a multiple of 0.0001"),
    ({}, ["experiments", "create", "str-weight.json"], "arms.0.weight: Input should be a valid"),
    ({}, ["experiments", "create", "str-days.json"], "design.graph_days: Input should be a val"),
    ({}, ["experiments", "create", "bool-strata.json"], "design.strata: Input should be a valid"),
    ({}, ["experiments", "start", "x", "--seed", "-1"], "--seed"),
    ({}, ["experiments", "report", "x", "--seed", "-1"], "--seed"),
    ({"OPENDISCO_PARAMS_FILE": "nan-params.json"}, ["recommend", "u1"], "a finite number"),
    ({}, ["experiments", "report", "x", "--bootstrap", "-5"], "--bootstrap"),
    ({}, ["apikeys", "create", "--name", " "], "name must say who the key is for"),
    ({}, ["events", "post", "binary.json"], "not JSON / JSON lines"),
    ({}, ["events", "post", "deep.json"], "not JSON / JSON lines"),
    ({}, ["templates", "show", "for_you", "--params", DEEP], "--params is not JSON"),
    # an --out that cannot be made failed after the work (training, tuning, evaluating) with
    # a NotADirectoryError traceback
    ({}, ["train", "ltr", "--out", "afile/models"], "--out: afile/models: Not a directory"),
    (
        {},
        [
            "tune",
            "--dataset",
            "synthetic:20",
            "--target",
            "EASE",
            "--trials",
            "1",
            "--out",
            "afile/t",
        ],
        "--out: afile/t: Not a directory",
    ),
    (
        {},
        ["eval", "run", "--dataset", "synthetic:20", "--no-served", "--out", "afile/e"],
        "--out: afile/e: Not a directory",
    ),
    # tune read it after the replay (served) with json.loads: a JSONDecodeError traceback, an
    # AttributeError on a list
    (
        {},
        [
            "tune",
            "--dataset",
            "synthetic:20",
            "--target",
            "EASE",
            "--trials",
            "1",
            "--out",
            "tuned",
        ],
        "tuned/params-v1.json: not a JSON document",
    ),
    (
        {},
        ["tune", "--dataset", "synthetic:20", "--target", "EASE", "--out", "tuned-list"],
        "tuned-list/params-v1.json: not a params file",
    ),
    ({}, ["dead-letters", "--limit", "99999999999999999999"], "--limit"),
    ({}, ["verify", "--show", "-1"], "--show"),
    ({}, ["sample", "-n", "-5"], "--size"),
    ({}, ["train", "ltr", "--since", "99999999999999d"], "further back than any date"),
    # a misspelt event type was ignored silently; a gain past 30 failed in LightGBM after
    # the join (LightGBMError: not less than the number of label mappings), a huge one in
    # numpy (OverflowError), both as tracebacks
    ({}, ["train", "ltr", "--labels", "lik=2"], "unknown event type(s) ['lik']"),
    ({}, ["train", "ltr", "--labels", "like=31"], "each from 0 to 30"),
    ({}, ["train", "ltr", "--labels", "like=" + "9" * 30], "each from 0 to 30"),
    ({}, ["apikeys", "create", "--name", "x", "--rate", "nan"], "rate_limit must be a finite"),
]


@pytest.mark.parametrize(("env", "args", "needle"), CASES, ids=[" ".join(c[1])[:40] for c in CASES])
def test_bad_operator_input_is_a_usage_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    args: list[str],
    needle: str,
) -> None:
    paths = _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OPENDISCO_MONGO_URL", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300")
    monkeypatch.setenv("OPENDISCO_OPENSEARCH_URL", "http://127.0.0.1:1")
    assert paths
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert needle in result.output, result.output
    assert "Traceback" not in result.output
    assert "errors.pydantic.dev" not in result.output  # one line, not pydantic's report
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.output
