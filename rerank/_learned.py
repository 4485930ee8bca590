"""LambdaMART (LightGBM ``lambdarank``) as the learned scoring step.

``LearnedScorer`` plugs into ``Reranker(config, scorer=...)`` in place of the linear model; it
scores the same feature matrix (:data:`FEATURE_NAMES`, built by ``assemble_features``) the
served-list log records, so what a model was trained on is what it scores.
``train_lambdamart`` fits a booster on requests grouped as LightGBM expects, with early
stopping on a validation set when one is given; ``opendisco.rerank.train_ltr`` builds those
groups from logged lists and later outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from opendisco._exceptions import ConfigError

from ._types import FEATURE_NAMES

__all__ = [
    "LTR_PARAMS",
    "LearnedScorer",
    "align_features",
    "check_model_text",
    "train_lambdamart",
]

#: LightGBM parameters of ``train_lambdamart`` (single-threaded and deterministic: the serving
#: process scores one request at a time and training runs beside other work)
LTR_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "lambdarank_truncation_level": 30,
    "verbosity": -1,
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
}


def align_features(X: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Columns of ``X`` (named ``names``) in :data:`FEATURE_NAMES` order; a feature the rows
    were logged without is NaN (LightGBM's missing value), one not served any more is dropped."""
    names = list(names)
    if names == list(FEATURE_NAMES):
        return np.asarray(X, dtype=np.float64)
    col = {n: j for j, n in enumerate(names)}
    out = np.full((X.shape[0], len(FEATURE_NAMES)), np.nan)
    for j, n in enumerate(FEATURE_NAMES):
        if n in col:
            out[:, j] = X[:, col[n]]
    return out


_TREE_KEYS = (b"num_leaves=", b"leaf_value=")
#: a tree's per-node arrays (``num_leaves - 1`` values each; LightGBM requires the first four)
_NODE_ARRAYS = (
    b"left_child",
    b"right_child",
    b"split_feature",
    b"threshold",
    b"split_gain",
    b"decision_type",
    b"internal_value",
    b"internal_weight",
    b"internal_count",
)
#: its per-leaf arrays (``num_leaves`` values each)
_LEAF_ARRAYS = (b"leaf_value", b"leaf_weight", b"leaf_count")


def _finite_leaves(block: bytes) -> bool:
    """Whether every ``leaf_value`` of a tree block is a finite number."""
    at = block.find(b"\nleaf_value=")
    line = block[at + 12 : block.find(b"\n", at + 1)] if at >= 0 else b""
    try:
        return all(math.isfinite(float(x)) for x in line.split())
    except ValueError:
        return False


def _tree_problem(block: bytes, features: int) -> str | None:
    """Why LightGBM cannot be trusted with a tree block, or None. Its parser aborts the whole
    process (an exception in its parallel tree parse) on an array whose length is not what
    ``num_leaves`` says, and its prediction follows ``left_child``/``right_child`` and reads
    ``split_feature`` unchecked: a child out of range or pointing back up, or a feature past
    the model's, read past its arrays or looped for ever. A categorical or linear tree (never
    written by ``train_lambdamart``) has arrays of its own: refused too."""
    keys = dict(ln.split(b"=", 1) for ln in block.splitlines()[1:] if b"=" in ln)
    try:
        leaves = int(keys[b"num_leaves"])
        if leaves < 1:
            return f"{leaves} leaves"
        if int(keys.get(b"num_cat", b"0") or 0) or int(keys.get(b"is_linear", b"0") or 0):
            return "categorical or linear splits"
        arrays = {k: keys[k].split() for k in (*_NODE_ARRAYS, *_LEAF_ARRAYS) if keys.get(k)}
        for key, values in arrays.items():
            want = leaves if key in _LEAF_ARRAYS else leaves - 1
            if len(values) != want and (want or key not in _NODE_ARRAYS):
                return f"{len(values)} {key.decode()} values for {leaves} leaves"
        if leaves == 1:
            return None
        if missing := [k.decode() for k in _NODE_ARRAYS[:4] if k not in arrays]:
            return f"no {missing[0]}"
        if not all(math.isfinite(float(x)) for x in arrays[b"threshold"]):
            return "a threshold that is not a finite number"
        split = [int(x) for x in arrays[b"split_feature"]]
        kinds = [int(x) for x in arrays.get(b"decision_type", ())]
        left, right = arrays[b"left_child"], arrays[b"right_child"]
        children = [(int(a), int(b)) for a, b in zip(left, right, strict=True)]
    except (KeyError, ValueError) as exc:
        return f"not a tree: {exc!r}"
    if any(not 0 <= f < features for f in split):
        return f"a split on a feature past the model's {features}"
    if any(k & 1 or not 0 <= k < 16 or (k >> 2) & 3 == 3 for k in kinds):
        return "a decision type this loader does not know (categorical, or not one)"
    seen_nodes, seen_leaves, todo = set(), set(), [0]
    while todo:
        node = todo.pop()
        if node < 0:
            if not ~node < leaves or ~node in seen_leaves:
                return "a leaf out of range or reached twice"
            seen_leaves.add(~node)
        elif node >= leaves - 1 or node in seen_nodes:
            return "a node out of range or reached twice (not a tree)"
        else:
            seen_nodes.add(node)
            todo.extend(children[node])
    if len(seen_leaves) != leaves:
        return "a leaf no path reaches"
    return None


def check_model_text(data: bytes, where: str) -> str:
    """The text of a LightGBM model file whose trees are all there (:class:`ConfigError`
    otherwise). LightGBM's parser trusts the ``tree_sizes`` its header lists: a file cut short
    (a copy or a save that did not finish) crashes the whole process (SIGSEGV or abort) in
    ``lgb.Booster`` instead of raising, so every tree block is checked against those sizes
    first, then the ``end of trees`` marker after them and the end of the parameters section
    (cut inside it, the parser reads past the end of the text as well), and every tree's
    arrays and structure (:func:`_tree_problem`: a corrupted one aborts the process or
    mis-scores)."""

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"model file {where}: {msg} (truncated or not a LightGBM model)")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"not text: {exc}") from exc
    if not data.startswith(b"tree\n"):
        raise bad("no LightGBM model header")
    end = data.find(b"\nend of trees")
    if end < 0:
        raise bad("no 'end of trees'")
    first = data.find(b"\nTree=0\n")
    start = (first if first >= 0 else end) + 1
    header = dict(ln.split(b"=", 1) for ln in data[:start].splitlines() if b"=" in ln)
    for key in (b"tree_sizes", b"max_feature_idx"):
        if key not in header:
            raise bad(f"no {key.decode()} in its header")
    try:
        sizes = [int(x) for x in header[b"tree_sizes"].split()]
        features = int(header[b"max_feature_idx"]) + 1
    except ValueError as exc:
        raise bad(f"bad tree_sizes or max_feature_idx: {exc}") from exc
    at = start
    for n, size in enumerate(sizes):
        block = data[at : at + size]
        if size <= 0 or len(block) < size or not block.startswith(b"Tree=%d\n" % n):
            raise bad(f"tree {n} of {len(sizes)} is not where its header puts it")
        if not all(key in block for key in _TREE_KEYS):
            raise bad(f"tree {n} is incomplete")
        if not _finite_leaves(block):
            raise ConfigError(
                f"model file {where}: tree {n} has a leaf value that is not a finite number "
                "(a diverged training): every score would be NaN; retrain it"
            )
        if problem := _tree_problem(block, features):
            raise ConfigError(f"model file {where}: tree {n}: {problem} (a corrupted model)")
        at += size
    if not data[at:].startswith(b"end of trees"):
        raise bad(f"'end of trees' does not follow its {len(sizes)} trees")
    params = data.find(b"\nparameters:\n", at)
    if params >= 0 and data.find(b"\nend of parameters", params) < 0:
        raise bad("its parameters section has no end")
    return text


class LearnedScorer:
    """A LightGBM booster scoring the feature matrix (a ``Scorer``)."""

    def __init__(self, booster: Any, best_iteration: int | None = None) -> None:
        self.booster = booster
        self.best_iteration = best_iteration

    def score(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(X, num_threads=1), dtype=np.float64)

    def save(self, path: str | Path) -> None:
        self.booster.save_model(str(path))

    def model_text(self) -> str:
        return str(self.booster.model_to_string())

    @classmethod
    def load(cls, path: str | Path) -> LearnedScorer:
        """A saved booster (:meth:`from_bytes` of the file's content)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"model file {path}: {exc}") from exc
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> LearnedScorer:
        """A booster from the content of a saved model (``where``: the file, for errors);
        :class:`ConfigError` when it was trained on other features than
        :data:`FEATURE_NAMES` (LightGBM stores the names in the model file)."""
        import lightgbm as lgb

        text = check_model_text(data, where)
        try:
            booster = lgb.Booster(model_str=text)
        except (lgb.basic.LightGBMError, ValueError) as exc:  # ValueError: pandas_categorical
            raise ConfigError(f"model file {where}: not a LightGBM model: {exc}") from exc
        names = tuple(booster.feature_name())
        if names != FEATURE_NAMES:
            raise ConfigError(
                f"model file {where} was trained on features {list(names)}; this reranker "
                f"computes {list(FEATURE_NAMES)}: retrain it (`opendisco train ltr`)"
            )
        return cls(booster)


def train_lambdamart(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    valid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    rounds: int = 100,
    early_stopping: int = 30,
    eval_at: int = 10,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    **overrides: Any,
) -> LearnedScorer:
    """Fit a lambdarank booster on grouped rows (``groups``: rows per request, in order).

    With ``valid`` (another ``(X, y, groups)``) training stops when NDCG@``eval_at`` there
    has not improved for ``early_stopping`` rounds and the best iteration is kept
    (``scorer.best_iteration``); without it, exactly ``rounds`` rounds are fitted."""
    import lightgbm as lgb

    if len(groups) == 0:
        raise ValueError("no request with both candidates and an outcome to learn from")
    p = {**LTR_PARAMS, **(params or {}), **overrides, "seed": seed, "eval_at": [eval_at]}
    ds = lgb.Dataset(X, label=y, group=groups, feature_name=list(FEATURE_NAMES))
    if valid is None:
        return LearnedScorer(lgb.train(p, ds, num_boost_round=rounds), rounds)
    vs = lgb.Dataset(valid[0], label=valid[1], group=valid[2], reference=ds)
    booster = lgb.train(
        p,
        ds,
        num_boost_round=rounds,
        valid_sets=[vs],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(early_stopping, first_metric_only=True, verbose=False)],
    )
    best = int(booster.best_iteration or rounds)
    return LearnedScorer(booster, best)
