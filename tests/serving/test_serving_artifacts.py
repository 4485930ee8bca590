"""Serving artifacts: a tuned params file and a trained model load into the served pipeline and
are named in every response's version string; a model of another feature schema refuses."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from opendisco import ConfigError, Settings
from opendisco.rerank import FEATURE_NAMES, LearnedScorer, train_lambdamart
from opendisco.serving import Artifacts, Discovery, load_model


def _params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params-v7.json"
    path.write_text(
        json.dumps(
            {
                "version": 7,
                "template_params": {"for_you": {"w_lexical": 0.25}, "cold_start": {}},
                "rerank": {"mmr_lambda": 0.9, "weights": {"quality": 0.5}},
            }
        )
    )
    return path


def _model(path: Path, names: list[str], rounds: int = 3) -> Path:
    rng = np.random.default_rng(0)
    X = rng.random((60, len(names)))
    y = (X[:, 0] > 0.5).astype(int)
    ds = lgb.Dataset(X, label=y, group=[10] * 6, feature_name=names)
    params = {"objective": "lambdarank", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 2}
    lgb.train(params, ds, num_boost_round=rounds).save_model(str(path))
    return path


def test_params_file_is_loaded_and_named(tmp_path: Path) -> None:
    settings = Settings(params_file=_params_file(tmp_path))
    art = Artifacts.from_settings(settings)
    assert art.params == {"for_you": {"w_lexical": 0.25}, "cold_start": {}}
    assert art.rerank.mmr_lambda == 0.9
    # overrides merge key by key: the other default weights stay
    assert art.rerank.weights["quality"] == 0.5 and art.rerank.weights["fused"] > 0
    assert art.params_name.startswith("params-v7@") and art.model_name == "linear"


def test_model_file_is_loaded_and_named(tmp_path: Path) -> None:
    path = _model(tmp_path / "model-v2.txt", list(FEATURE_NAMES))
    art = Artifacts.from_settings(Settings(model_file=path))
    assert isinstance(art.scorer, LearnedScorer)
    assert art.model_name.startswith("model-v2@")
    scores = art.scorer.score(np.zeros((4, len(FEATURE_NAMES))))
    assert scores.shape == (4,)


def test_a_model_replaced_while_it_loads_is_named_by_the_content_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = list(FEATURE_NAMES)
    first, second = _model(tmp_path / "first.txt", names), _model(tmp_path / "second.txt", names, 8)
    path = tmp_path / "model-v3.txt"
    shutil.copy(first, path)
    read_bytes = Path.read_bytes

    def then_replaced(self: Path) -> bytes:  # an operator's `mv` right after each read
        data = read_bytes(self)
        if self == path:
            shutil.copy(second, tmp_path / "next.txt")
            os.replace(tmp_path / "next.txt", path)
        return data

    monkeypatch.setattr(Path, "read_bytes", then_replaced)
    scorer, name = load_model(path)
    monkeypatch.undo()
    assert name == f"model-v3@{hashlib.sha256(first.read_bytes()).hexdigest()[:8]}"
    X = np.random.default_rng(1).random((20, len(names)))
    loaded = LearnedScorer.load(first).score(X)
    assert not np.allclose(loaded, LearnedScorer.load(second).score(X))
    np.testing.assert_allclose(scorer.score(X), loaded)  # the content its name hashes


def test_a_model_of_other_features_refuses_to_load(tmp_path: Path) -> None:
    other = [*FEATURE_NAMES[:-1], "something_else"]
    path = _model(tmp_path / "model-v3.txt", other)
    with pytest.raises(ConfigError, match="trained on features"):
        Artifacts.from_settings(Settings(model_file=path))
    bad = tmp_path / "model-v4.txt"
    bad.write_text("not a model")
    with pytest.raises(ConfigError, match="model file"):
        Artifacts.from_settings(Settings(model_file=bad))


_LOAD_CUTS = """
import sys
from pathlib import Path
from opendisco import ConfigError
from opendisco.serving import load_model
full = Path(sys.argv[1]).read_bytes()
for cut in map(int, sys.argv[2:]):
    path = Path(sys.argv[1]).with_name(f"model-v{cut + 10}.txt")
    path.write_bytes(full[:cut])
    try:
        load_model(path)
        print(cut, "loaded")
    except ConfigError as exc:
        print(cut, "refused", str(exc).splitlines()[0])
"""


def test_a_truncated_model_file_is_refused_not_a_crash(tmp_path: Path) -> None:
    """A model file cut short (a copy or a save that did not finish) is a ConfigError naming
    it: LightGBM's own parser segfaulted or aborted the whole process (serve, recommend,
    experiments create) on most cuts. Loaded in a child process: a crash fails the test."""
    path = _model(tmp_path / "model-v1.txt", list(FEATURE_NAMES))
    data = path.read_bytes()
    trees = data.index(b"\nTree=0\n")
    params = data.index(b"\nparameters:\n")
    cuts = [0, 5, trees // 2, trees + 20, (trees + params) // 2, params + 40, len(data) - 2]
    got = subprocess.run(
        [sys.executable, "-c", _LOAD_CUTS, str(path), *map(str, cuts)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 0, (got.returncode, got.stderr[-2000:])
    lines = got.stdout.splitlines()
    assert len(lines) == len(cuts), got.stdout
    for line in lines:
        assert " refused model file " in line, line


def test_a_broken_params_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "params-v1.json"
    path.write_text('{"rerank": {"weights": {"no_such_feature": 1.0}}}')
    with pytest.raises(ConfigError, match="invalid rerank overrides"):
        Artifacts.from_settings(Settings(params_file=path))
    path.write_text("{")
    with pytest.raises(ConfigError, match="params file"):
        Artifacts.from_settings(Settings(params_file=path))


async def test_served_answers_use_and_name_the_artifacts(
    market_settings: Settings, market: Any, model: Any, tmp_path: Path
) -> None:
    from opendisco import clients

    settings = market_settings.model_copy(
        update={
            "params_file": _params_file(tmp_path),
            "model_file": _model(tmp_path / "model-v2.txt", list(FEATURE_NAMES)),
        }
    )
    os_client = clients.async_opensearch(settings)
    mongo = clients.mongo_async(settings)
    _, users = market
    member = users[40]["_id"]
    started: list[Any] = []
    try:
        disco = Discovery(settings, os_client, mongo[settings.mongo_db], model=model)
        started.append(disco)
        liked = (await disco.recommend(member, k=5)).ids[0]
        like = {"id": f"art-{member}", "type": "like", "user_id": member, "item_id": liked}
        assert (await disco.record_events([like])).accepted == 1
        recs = await disco.recommend(member, k=5, explain=True)
        assert recs.surface == "for_you"
        assert "+params-v7@" in recs.version and "+model-v2@" in recs.version
        assert disco.version.endswith(disco.artifacts.name)
        assert isinstance(disco.reranker.scorer, LearnedScorer)
        # the served template parameters come from the params file
        plan = await disco.plan("for_you", 5, user_id=member)
        assert plan.request.params["w_lexical"] == 0.25
        default = Discovery(market_settings, os_client, mongo[settings.mongo_db], model=model)
        started.append(default)
        plan = await default.plan("for_you", 5, user_id=member)
        assert "w_lexical" not in plan.request.params
        assert (await default.recommend(member, k=5)).version.endswith("+params-default+linear")
    finally:
        # their background pacing steps end before the clients close: one cut off holding the
        # step's lease left it held (this process is alive) for lease_s, and the market tests'
        # forced step that ran next waited force_wait_s and skipped (seen in a full run)
        for d in started:
            await d.drain()
        await os_client.close()
        await mongo.close()


_LOAD_EDITS = """
import sys
from pathlib import Path
import numpy as np
from opendisco import ConfigError
from opendisco.rerank import FEATURE_NAMES
from opendisco.serving import load_model
for name in sys.argv[1:]:
    try:
        scorer, _ = load_model(Path(name))
        scores = scorer.score(np.zeros((3, len(FEATURE_NAMES))))
        print(Path(name).stem, "loaded", scores.tolist(), flush=True)
    except ConfigError as exc:
        print(Path(name).stem, "refused", str(exc).splitlines()[0], flush=True)
"""


def _same_length(block: str, key: str, pick: Any, value: Any) -> str:
    """``block`` with the first token of line ``key=`` that ``pick`` accepts replaced by
    ``value(token)`` (as long as the token: the header's tree sizes still hold)."""
    lines = block.split("\n")
    at = next(i for i, ln in enumerate(lines) if ln.startswith(f"{key}="))
    tokens = lines[at].removeprefix(f"{key}=").split(" ")
    j = next(j for j, t in enumerate(tokens) if pick(t))
    tokens[j] = str(value(tokens[j]))
    lines[at] = f"{key}=" + " ".join(tokens)
    return "\n".join(lines)


def test_a_corrupted_model_file_is_refused_not_a_crash_a_hang_or_a_misread(
    tmp_path: Path,
) -> None:
    """Edits that keep every tree's size (a flipped digit): LightGBM's loader aborted the
    whole process on a leaf count its arrays disagree with (an exception in its parallel
    tree parse), looped for ever on a child pointing back up, and read past its arrays on a
    split feature or child out of range or a categorical decision type without categories.
    Each is a ConfigError naming the file (child processes: a crash or a hang fails)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, len(FEATURE_NAMES)))
    y = (X[:, 0] > 0.5).astype(int) + (X[:, 3] > 1.0)
    path = tmp_path / "model-v1.txt"
    train_lambdamart(X, y, np.full(100, 20), rounds=2, min_data_in_leaf=5).save(path)
    text = path.read_text()
    start, end = text.index("Tree=0\n"), text.index("\n\n", text.index("Tree=0\n"))
    tree = text[start:end]
    leaves = int(tree.split("num_leaves=")[1].split("\n")[0])
    assert 11 <= leaves <= 99, tree  # a two-digit count: one less keeps its length
    edits = {
        "leaves": _same_length(tree, "num_leaves", lambda t: True, lambda t: int(t) - 1),
        "feature": _same_length(tree, "split_feature", lambda t: len(t) == 2, lambda t: 99),
        "loop": _same_length(tree, "left_child", lambda t: t == "1", lambda t: 0),
        "child": _same_length(tree, "right_child", lambda t: len(t) == 2, lambda t: 98),
        "categorical": _same_length(tree, "decision_type", lambda t: t == "2", lambda t: 3),
    }
    files = []
    for name, edited in edits.items():
        assert len(edited) == len(tree) and edited != tree, name
        files.append(tmp_path / f"{name}.txt")
        files[-1].write_text(text[:start] + edited + text[end:])
    got = subprocess.run(
        [sys.executable, "-c", _LOAD_EDITS, str(path), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 0, (got.returncode, got.stdout, got.stderr[-2000:])
    lines = got.stdout.splitlines()
    assert lines[0].startswith("model-v1 loaded"), got.stdout  # the file as written
    assert [ln.split()[:2] for ln in lines[1:]] == [[n, "refused"] for n in edits], got.stdout
    assert all("tree 0:" in ln and "corrupted" in ln for ln in lines[1:]), got.stdout
