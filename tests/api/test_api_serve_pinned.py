"""``opendisco serve --workers N`` serves, in every worker, the files it checked at start.

uvicorn's supervisor replaces a worker that died (kill -9, the OOM killer) with a new process
that builds the app again. Each worker used to load ``model_file`` (and the params and
template files) itself, whatever the file held by then: a model published over the served
path (an operator's ``cp``, a symlink moved to roll forward or back) reached the replacement
only, so two workers answered with two models; a file cut short or of another feature schema
failed the replacement's start, and uvicorn's supervisor then stopped the whole server
(measured with a real ``serve --workers 2``: ``/healthz`` refused 2 s after the kill). The
server now pins the bytes it checked (copies in the run's directory, same file names, so the
version string is the same) and every worker loads those; new files are served by a restart.

The workers' start is what uvicorn runs: ``opendisco.api:app_from_env`` on the settings the
supervisor put in the environment (read from there at the moment a worker would start).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import uvicorn
from click.testing import CliRunner

from opendisco import Settings
from opendisco.api import SETTINGS_ENV
from opendisco.cli.main import cli
from opendisco.rerank import FEATURE_NAMES
from opendisco.serving import Artifacts


def _model(path: Path, rounds: int) -> Path:
    rng = np.random.default_rng(0)
    X = rng.random((60, len(FEATURE_NAMES)))
    y = (X[:, 0] > 0.5).astype(int)
    ds = lgb.Dataset(X, label=y, group=[10] * 6, feature_name=list(FEATURE_NAMES))
    params = {"objective": "lambdarank", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 2}
    lgb.train(params, ds, num_boost_round=rounds).save_model(str(path))
    return path


def _worker() -> tuple[str, Settings]:
    """What a worker started now serves (its artifacts' name) and its settings."""
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    return Artifacts.from_settings(settings).name, settings


def test_a_replaced_worker_serves_the_model_the_server_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path / "model-v3.txt", 3)
    params = tmp_path / "params-v2.json"
    params.write_text(json.dumps({"rerank": {"mmr_lambda": 0.9}}))
    good = Artifacts.from_settings(Settings(model_file=model, params_file=params)).name
    workers: dict[str, Any] = {}

    def supervise(app: str, **opts: Any) -> None:  # uvicorn's supervisor, its workers' start
        assert app == "opendisco.api:app_from_env" and opts["workers"] == 2
        workers["first"], settings = _worker()
        # written over the served paths meanwhile: cut short, then another model
        model.write_bytes(model.read_bytes()[:200])
        params.write_text("{")
        workers["cut"], _ = _worker()
        _model(model, 8)
        workers["other"], _ = _worker()
        workers["files"] = [settings.model_file, settings.params_file]
        workers["playground"] = settings.playground_dir

    monkeypatch.setattr(uvicorn, "run", supervise)
    monkeypatch.setenv("OPENDISCO_MODEL_FILE", str(model))
    monkeypatch.setenv("OPENDISCO_PARAMS_FILE", str(params))
    monkeypatch.setenv("OPENDISCO_STATE_DIR", str(tmp_path / "state"))
    run = CliRunner().invoke(cli, ["serve", "--workers", "2"], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert workers["first"] == workers["cut"] == workers["other"] == good
    # copies under the same names in the run's directory, removed when the server stopped;
    # the playground still promotes beside the served params file
    assert [f.name for f in workers["files"]] == ["model-v3.txt", "params-v2.json"]
    assert all(f.parent != tmp_path and not f.exists() for f in workers["files"])
    assert workers["playground"] == tmp_path
