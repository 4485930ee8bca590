"""Stored search templates: a surface's sources as mustache for OpenSearch's ``_scripts``.

The structure of a template converts to mustache: ``$param`` becomes ``{{#toJson}}name{{/toJson}}``
(a string parameter ``"{{name}}"``, JSON-escaped by mustache) and ``$if`` a section on the
boolean ``has_<name>`` that :func:`script_params` sets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from opendisco._exceptions import ConfigError, TemplateParamError

from ._params import validate_params
from ._template import is_set, load

__all__ = ["script_params", "to_mustache"]


def _has(name: str) -> str:
    return f"has_{name}"


def _section(flag: str, inner: str) -> str:
    return "{{#" + flag + "}}" + inner + "{{/" + flag + "}}"


def _join(parts: list[tuple[str | None, str]], what: str) -> str:
    """Comma-join in order; a conditional part sits in its section with its own comma.

    Conditional parts before the first unconditional one carry a trailing comma, those after
    it a leading comma, so the order of the file is kept and the JSON stays valid.
    """
    first = next((i for i, (flag, _) in enumerate(parts) if flag is None), None)
    if first is None and parts:
        raise ConfigError(f"{what} with $if entries needs one unconditional entry")
    out = []
    for i, (flag, text) in enumerate(parts):
        if flag is None:
            out.append(("," if i > first else "") + text)  # type: ignore[operator]
        elif first is not None and i < first:
            out.append(_section(flag, text + ","))
        else:
            out.append(_section(flag, "," + text))
    return "".join(out)


def _mustache(node: Any, strings: frozenset[str]) -> str:
    if isinstance(node, list):
        parts: list[tuple[str | None, str]] = []
        for el in node:
            if isinstance(el, dict) and "$if" in el:
                parts.append((_has(el["$if"]), _mustache(el["then"], strings)))
            else:
                parts.append((None, _mustache(el, strings)))
        return "[" + _join(parts, "a list") + "]"
    if isinstance(node, dict):
        if "$param" in node:
            if node["$param"] in strings:  # toJson leaves scalars bare; {{x}} is JSON-escaped
                return '"{{' + node["$param"] + '}}"'
            return _section("toJson", node["$param"])
        parts = []
        for k, v in node.items():
            if isinstance(v, dict) and "$if" in v:
                parts.append((_has(v["$if"]), json.dumps(k) + ":" + _mustache(v["then"], strings)))
            else:
                parts.append((None, json.dumps(k) + ":" + _mustache(v, strings)))
        return "{" + _join(parts, "an object") + "}"
    return json.dumps(node)


def to_mustache(surface: str, source: str) -> str:
    """One source of a surface as a mustache search template (for ``_scripts``)."""
    tpl = load(surface)
    if source not in tpl.sources:
        raise TemplateParamError(f"{surface}: no source {source!r}; have {list(tpl.sources)}")
    strings = frozenset(n for n, p in tpl.specs.items() if p.type in ("str", "text", "date"))
    return _mustache(tpl.expand(tpl.sources[source]["body"]), strings)


def script_params(surface: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validated values plus the ``has_<name>`` flags the stored templates' sections test."""
    tpl = load(surface)
    values = validate_params(tpl.specs, params or {}, surface)
    return {**values, **{_has(k): is_set(v) for k, v in values.items()}}
