"""CLI smoke tests (CliRunner) for ``eval`` and ``tune`` on ml-latest-small, baselines only."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from opendisco import Settings
from opendisco.cli.main import cli
from opendisco.eval import read_movielens, time_split


def test_eval_writes_one_table_with_every_baseline(
    movielens: Path, tmp_path: Path, base_settings: Settings
) -> None:
    out = tmp_path / "res"
    args = ["eval", "--dataset", str(movielens), "--users", "60", "--k", "5"]
    args += ["--no-served", "--ease-items", "500", "--out", str(out)]
    result = CliRunner().invoke(cli, args, obj=base_settings, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in ("random", "most-popular", "EASE", "ALS"):
        assert name in result.output
    assert "ndcg@5" in result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["k"] == 5 and report["stage"] == "test"
    assert [m["name"] for m in report["models"]] == ["random", "most-popular", "EASE", "ALS"]
    evaluable = len(time_split(read_movielens(movielens)).stage("test").evaluable)
    assert all(m["users"] == min(60, evaluable) for m in report["models"])
    assert report["split"]["ease_lambda"] > 0
    assert (out / "eval.md").read_text().startswith("| model | recall@5 |")


def test_eval_rejects_a_directory_without_movielens_files(
    tmp_path: Path, base_settings: Settings
) -> None:
    out = tmp_path / "results"
    result = CliRunner().invoke(
        cli,
        ["eval", "--dataset", str(tmp_path), "--no-served", "--out", str(out)],
        obj=base_settings,
    )
    assert result.exit_code == 2
    assert "ml-latest-small" in result.output and "ml-100k" in result.output
    assert not out.exists()  # a refused dataset leaves no results folder behind


def test_tune_writes_new_versions_plot_and_report(tmp_path: Path, base_settings: Settings) -> None:
    out = tmp_path / "tuning"
    args = ["tune", "--dataset", "synthetic:200", "--target", "EASE", "--trials", "3"]
    args += ["--users", "80", "--out", str(out)]
    first = CliRunner().invoke(cli, args, obj=base_settings, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    v1 = json.loads((out / "params-v1.json").read_text())
    assert v1["version"] == 1 and v1["target"] == "EASE" and v1["based_on"] == "defaults"
    assert 10.0 <= v1["model_params"]["lam"] <= 5000.0
    assert v1["value"] >= v1["current_value"]
    png = (out / "params-v1-trials.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "params-v1-report.html").read_text()
    assert "params-v1-trials.png" in page and "<table>" in page
    # a second run never overwrites: it starts from v1 (trial 0) and writes v2
    second = CliRunner().invoke(cli, args, obj=base_settings, catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert json.loads((out / "params-v1.json").read_text()) == v1
    v2 = json.loads((out / "params-v2.json").read_text())
    assert v2["based_on"] == "params-v1.json"
    assert v2["value"] >= v1["value"] - 1e-12  # trial 0 re-evaluates v1's parameters


def test_eval_on_the_synthetic_marketplace_reports_exposure(
    tmp_path: Path, base_settings: Settings
) -> None:
    out = tmp_path / "syn"
    args = ["eval", "--dataset", "synthetic:120", "--no-served", "--k", "5"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)], obj=base_settings)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["dataset"] == "synthetic-120"
    by = {m["name"]: m["metrics"] for m in report["models"]}
    assert set(by) == {"random", "most-popular", "EASE", "ALS"}
    for metrics in by.values():
        assert 0.0 < metrics["coverage"] <= 1.0 and 0.0 <= metrics["gini"] <= 1.0
    # most-popular shows everyone the same few profiles: the most concentrated exposure
    assert by["most-popular"]["gini"] > by["random"]["gini"]
    assert by["most-popular"]["coverage"] < by["random"]["coverage"]


def test_eval_rejects_a_malformed_synthetic_spec(base_settings: Settings) -> None:
    result = CliRunner().invoke(
        cli, ["eval", "--dataset", "synthetic:x", "--no-served"], obj=base_settings
    )
    assert result.exit_code == 2
    assert "synthetic:N" in result.output
