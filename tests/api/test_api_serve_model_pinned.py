"""``opendisco serve --workers N`` serves, in every worker, the model it checked at start.

uvicorn's supervisor replaces a worker that died (kill -9, the OOM killer) with a new process
that builds the app again. Each worker used to load ``model_file`` itself, whatever the file
held by then: a model published over the served path (an operator's ``cp`` or a symlink moved
to roll forward or back) reached the replacement only, so two workers answered with two models,
and a file that was cut short or of another feature schema made every replacement refuse to
start (a crash loop; with every worker replaced, no server). The supervisor now pins the bytes
it checked (a copy in the run's directory, same file name, so the version string is the same)
and every worker loads that copy; a new model is served by a restart.

The workers' start is what uvicorn does: ``opendisco.api:app_from_env`` on the settings the
supervisor put in the environment (here read from there at the moment it would run).
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


def test_a_replaced_worker_serves_the_model_the_server_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = _model(tmp_path / "model-v3.txt", 3)
    good = Artifacts.from_settings(Settings(model_file=served)).model_name
    workers: dict[str, Any] = {}

    def supervise(app: str, **opts: Any) -> None:  # uvicorn's supervisor, its workers' start
        assert app == "opendisco.api:app_from_env" and opts["workers"] == 2
        env = os.environ[SETTINGS_ENV]
        workers["first"] = Artifacts.from_settings(Settings.model_validate_json(env)).model_name
        # published over the served path meanwhile: cut short, then another model
        served.write_bytes(served.read_bytes()[:200])
        workers["cut"] = Artifacts.from_settings(Settings.model_validate_json(env)).model_name
        _model(served, 8)
        workers["other"] = Artifacts.from_settings(Settings.model_validate_json(env)).model_name
        workers["pinned"] = json.loads(env)["model_file"]

    monkeypatch.setattr(uvicorn, "run", supervise)
    monkeypatch.setenv("OPENDISCO_MODEL_FILE", str(served))
    monkeypatch.setenv("OPENDISCO_STATE_DIR", str(tmp_path / "state"))
    run = CliRunner().invoke(cli, ["serve", "--workers", "2"], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert workers["first"] == workers["cut"] == workers["other"] == good
    # the copy lived in the run's directory, removed when the server stopped
    assert Path(workers["pinned"]).name == "model-v3.txt"
    assert Path(workers["pinned"]).parent != served.parent
    assert not Path(workers["pinned"]).exists()
