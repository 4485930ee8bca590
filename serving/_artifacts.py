"""Versioned serving artifacts: a tuned params file, template versions, a ranking model.

``opendisco tune`` (and the playground's promote) writes ``params-v<N>.json``
(``template_params`` per surface and ``rerank`` overrides); the playground promotes a template
draft to ``template-<surface>-v<N>.json``; ``opendisco train ltr`` writes a LightGBM model.
Settings name them (``params_file``, ``template_files``, ``model_file``);
:meth:`Artifacts.from_settings` loads them, and every response's version string names what
was used (:attr:`Artifacts.name`), e.g.
``for_you@1a2b3c4d5e6f+params-v3@9f8e7d6c+model-v2@0a1b2c3d``. A model whose feature schema
differs from the reranker's (:data:`~opendisco.rerank.FEATURE_NAMES`) refuses to load.

A params document — a file or a playground draft — is checked by one function,
:func:`check_params`: every template value against the declaring templates' own parameter
specs, the rerank overrides against :class:`~opendisco.rerank.RerankConfig`, and no override of
a parameter every request sets (:data:`~opendisco.queries.REQUEST_PARAMS`: the hard rules).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from opendisco._exceptions import (
    ConfigError,
    InvalidInput,
    TemplateParamError,
    validation_problems,
)
from opendisco._settings import Settings
from opendisco.queries import REQUEST_PARAMS, Template, load, surfaces, template_from_doc
from opendisco.rerank import LearnedScorer, RerankConfig, Scorer, merged_config

__all__ = ["Artifacts", "check_params", "load_model", "load_params", "load_template"]


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
    #: surface -> a template version or draft served instead of the shipped file
    templates: Mapping[str, Template] = field(default_factory=dict)

    @property
    def name(self) -> str:
        tpls = "".join(f"+{self.templates[s].version}" for s in sorted(self.templates))
        return f"{self.params_name}+{self.model_name}{tpls}"

    def with_params(self, doc: Mapping[str, Any], name: str) -> Artifacts:
        """These artifacts with a params document (checked by :func:`check_params`) in place of
        the params file, named ``name@<content hash>``; model and templates stay."""
        tparams, config = check_params(doc)
        return replace(self, params=tparams, rerank=config, params_name=_named(name, doc))

    def with_template(self, template: Template) -> Artifacts:
        """These artifacts with ``template`` served for its surface."""
        return replace(self, templates={**self.templates, template.surface: template})

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
        """The params file, template files and model named by the settings (defaults when
        unset); ``params``/``rerank`` overrides given in code (tuning trials) replace the
        params file, the model and templates stay."""
        scorer: Scorer | None = None
        model_name = "linear"
        if settings.model_file is not None:
            scorer, model_name = load_model(settings.model_file)
        templates: dict[str, Template] = {}
        for path in settings.template_files:
            tpl = load_template(path)
            if tpl.surface in templates:
                raise ConfigError(f"template_files: two templates of {tpl.surface}: {path}")
            templates[tpl.surface] = tpl
        if params or rerank:
            return replace(cls.inline(params, rerank, scorer, model_name), templates=templates)
        if settings.params_file is None:
            return cls(scorer=scorer, model_name=model_name, templates=templates)
        tparams, config, params_name = load_params(settings.params_file)
        return cls(tparams, config, scorer, params_name, model_name, templates)


def _named(name: str, doc: Mapping[str, Any]) -> str:
    return f"{name}@{_digest(json.dumps(doc, sort_keys=True, default=str).encode())}"


def _declaring(name: str) -> list[str]:
    return [s for s in surfaces() if name in load(s).specs]


def check_params(doc: Any) -> tuple[dict[str, Any], RerankConfig]:
    """``(template params, rerank config)`` of a params document (``{"template_params",
    "rerank", ...}``), every value checked: :class:`InvalidInput` naming the first problem.

    ``template_params`` holds flat names (for every surface that declares them) and
    ``{"<surface>": {...}}`` blocks; each value is coerced by the declaring template's spec.
    """
    if not isinstance(doc, Mapping):
        raise InvalidInput("a params document is a JSON object {template_params, rerank}")
    tparams = doc.get("template_params")
    tparams = {} if tparams is None else tparams
    if not isinstance(tparams, Mapping):
        raise InvalidInput("template_params must be an object")
    for key, value in tparams.items():
        if key in surfaces():
            if not isinstance(value, Mapping):
                raise InvalidInput(f"template_params.{key} must be an object of parameters")
            checks = [(f"{key}.{n}", n, v, [key]) for n, v in value.items()]
        else:
            checks = [(key, key, value, _declaring(key))]
        for where, name, val, declaring in checks:
            if name in REQUEST_PARAMS:
                raise InvalidInput(
                    f"template_params.{where}: {name!r} is set by every request (member, "
                    "exclusions, caps) and cannot be overridden"
                )
            if not declaring or name not in load(declaring[0]).specs:
                raise TemplateParamError(
                    f"template_params.{where}: no template declares a parameter {name!r}"
                )
            for surface in declaring:
                try:
                    load(surface).specs[name].coerce(val)
                except TemplateParamError as exc:
                    raise TemplateParamError(f"template_params.{where}: {exc}") from exc
    rerank = doc.get("rerank")
    rerank = {} if rerank is None else rerank
    if not isinstance(rerank, Mapping):
        raise InvalidInput("rerank must be an object of RerankConfig fields")
    try:
        config = merged_config(rerank)
    except (ValueError, TypeError) as exc:
        why = validation_problems(exc) if isinstance(exc, ValidationError) else exc
        raise InvalidInput(f"invalid rerank overrides: {why}") from exc
    return dict(tparams), config


def load_params(path: Path) -> tuple[dict[str, Any], RerankConfig, str]:
    """``(template params, rerank config, name)`` of a ``params-v<N>.json`` written by tune."""
    try:
        data = path.read_bytes()
        doc = json.loads(data)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON, UTF-8
        raise ConfigError(f"params file {path}: not a JSON document: {exc}") from exc
    try:
        tparams, rerank = check_params(doc)
    except InvalidInput as exc:
        raise ConfigError(f"params file {path}: {exc}") from exc
    return tparams, rerank, _label(path, data)


def load_template(path: Path) -> Template:
    """A template version file (``template-<surface>-v<N>.json``: ``{"surface", "template"}``),
    named ``<file stem>@<content hash>`` and guarded like every non-shipped template."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON, UTF-8
        raise ConfigError(f"template file {path}: not a JSON document: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("surface"), str):
        raise ConfigError(f"template file {path}: not a template version ({{surface, template}})")
    try:
        return template_from_doc(doc["surface"], doc.get("template"), label=path.stem)
    except TemplateParamError as exc:
        raise ConfigError(f"template file {path}: {exc}") from exc


def load_model(path: Path) -> tuple[Scorer, str]:
    """A trained ranking model and its name; refuses a model trained on other features.
    The file is read once: the name's hash is of the content loaded, also when the file is
    replaced meanwhile."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"model file {path}: {exc}") from exc
    scorer = LearnedScorer.from_bytes(data, str(path))  # ConfigError on a schema mismatch
    return scorer, _label(path, data)
