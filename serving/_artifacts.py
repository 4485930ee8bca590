"""Versioned serving artifacts: a tuned params file and a trained ranking model.

``opendisco tune`` writes ``params-v<N>.json`` (``template_params`` per surface and ``rerank``
overrides); ``opendisco train ltr`` writes a LightGBM model. Settings name them
(``params_file``, ``model_file``); :meth:`Artifacts.from_settings` loads both, and every
response's version string names what was used (:attr:`Artifacts.name`), e.g.
``for_you@1a2b3c4d5e6f+params-v3@9f8e7d6c+model-v2@0a1b2c3d``. A model whose feature schema
differs from the reranker's (:data:`~opendisco.rerank.FEATURE_NAMES`) refuses to load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opendisco._exceptions import ConfigError
from opendisco._settings import Settings
from opendisco.rerank import LearnedScorer, RerankConfig, Scorer, merged_config

__all__ = ["Artifacts"]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]


def _label(path: Path, data: bytes) -> str:
    return f"{path.stem}@{_digest(data)}"


@dataclass(frozen=True)
class Artifacts:
    """Template parameter overrides, the rerank config and the scorer a pipeline serves."""

    params: dict[str, Any] = field(default_factory=dict)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    scorer: Scorer | None = None  # None: the linear model of ``rerank``
    params_name: str = "params-default"
    model_name: str = "linear"

    @property
    def name(self) -> str:
        return f"{self.params_name}+{self.model_name}"

    @classmethod
    def inline(
        cls,
        params: Mapping[str, Any] | None = None,
        rerank: RerankConfig | Mapping[str, Any] | None = None,
        scorer: Scorer | None = None,
        model_name: str = "linear",
    ) -> Artifacts:
        """Overrides given in code (tuning trials, tests), named by their content hash."""
        config = rerank if isinstance(rerank, RerankConfig) else merged_config(rerank or {})
        if not params and rerank is None:
            return cls(scorer=scorer, model_name=model_name)
        blob = json.dumps(
            {"params": dict(params or {}), "rerank": config.get_config()},
            sort_keys=True,
            default=str,
        ).encode()
        return cls(dict(params or {}), config, scorer, f"inline@{_digest(blob)}", model_name)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        params: Mapping[str, Any] | None = None,
        rerank: Mapping[str, Any] | None = None,
    ) -> Artifacts:
        """The params file and model named by the settings (defaults when unset);
        ``params``/``rerank`` overrides given in code (tuning trials) replace the params file,
        the model stays."""
        scorer: Scorer | None = None
        model_name = "linear"
        if settings.model_file is not None:
            scorer, model_name = load_model(settings.model_file)
        if params or rerank:
            return cls.inline(params, rerank, scorer, model_name)
        if settings.params_file is None:
            return cls(scorer=scorer, model_name=model_name)
        tparams, config, params_name = load_params(settings.params_file)
        return cls(tparams, config, scorer, params_name, model_name)


def load_params(path: Path) -> tuple[dict[str, Any], RerankConfig, str]:
    """``(template params, rerank config, name)`` of a ``params-v<N>.json`` written by tune."""
    try:
        data = path.read_bytes()
        doc = json.loads(data)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"params file {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("template_params", {}), dict):
        raise ConfigError(f"params file {path}: not a params-v<N>.json written by tune")
    try:
        rerank = merged_config(doc.get("rerank") or {})
    except ValueError as exc:
        raise ConfigError(f"params file {path}: invalid rerank overrides: {exc}") from exc
    return dict(doc.get("template_params") or {}), rerank, _label(path, data)


def load_model(path: Path) -> tuple[Scorer, str]:
    """A trained ranking model and its name; refuses a model trained on other features."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"model file {path}: {exc}") from exc
    scorer = LearnedScorer.load(path)  # raises ConfigError on a schema mismatch
    return scorer, _label(path, data)
