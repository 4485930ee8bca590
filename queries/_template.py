"""Query templates kept as JSON files in ``templates/`` and rendered by structure, not text.

A template file (one per surface) holds ``params`` (typed declarations with defaults),
``fusion`` (how its sources are combined) and ``sources`` (named search bodies, each with the
parameters it ``requires``). Inside the bodies three directives are allowed:

``{"$param": "name"}``
    replaced by the validated value, as a JSON value (strings stay data, never JSON text);
``{"$if": "name", "then": X}``
    X when the parameter is set (not null / empty / false); in a list the element is
    dropped otherwise, as an object value its key is dropped;
``{"$ref": "fragment"}``
    a fragment from ``templates/_partials.json`` (a list fragment is spliced into the list).

``_partials.json`` also declares the parameters every surface shares; a surface file may
override their defaults. The same structure converts to mustache for OpenSearch stored
search templates (:func:`to_mustache`), where ``$param`` becomes ``{{#toJson}}name{{/toJson}}``
and ``$if`` becomes a section on the boolean ``has_<name>`` (:mod:`._mustache`).

A template that is not a shipped file — a promoted version or a playground draft, built by
:func:`template_from_doc` — is parsed the same way with the shipped partials, and is
*guarded*: :func:`render` puts every source's query under the shipped ``filter`` fragment
(eligibility, exclusions, exposure caps), so an edited template can change what is scored and
how, never who may be shown.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

from opendisco._domain import Surface
from opendisco._exceptions import ConfigError, TemplateParamError

from ._params import REQUEST_PARAMS, ParamSpec, validate_params

__all__ = [
    "SURFACES",
    "Template",
    "is_set",
    "load",
    "render",
    "surfaces",
    "template_from_doc",
    "template_version",
]

#: one template file per surface (a test checks the files against the enum)
SURFACES: tuple[str, ...] = tuple(s.value for s in Surface)
_PARTIALS = "_partials"
#: the shipped fragment holding every hard rule (eligibility, exclusions, exposure caps)
HARD_FILTER = "filter"
#: the fragments that are the engine's half of the hard rules: every source of a shipped
#: (unguarded) template must reach both (directly or through ``HARD_FILTER``)
HARD_FRAGMENTS = frozenset({"eligibility", "exclusions"})


def _read(name: str) -> tuple[str, dict[str, Any]]:
    path = resources.files(__package__).joinpath("templates", f"{name}.json")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"no query template {name!r}; have {surfaces()}") from exc
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"query template {name}.json is not valid JSON: {exc}") from exc


def surfaces() -> list[str]:
    return sorted(
        p.name.removesuffix(".json")
        for p in resources.files(__package__).joinpath("templates").iterdir()
        if p.name.endswith(".json") and not p.name.startswith("_")
    )


def is_set(value: Any) -> bool:
    """What ``$if`` tests: not null, not an empty string/list, not false."""
    return value is not None and value is not False and value != "" and value != []


@dataclass(frozen=True)
class Template:
    surface: str
    version: str
    doc: str
    specs: dict[str, ParamSpec]
    fusion: dict[str, Any]
    sources: dict[str, dict[str, Any]]  # name -> {"requires": [...], "body": {...}}
    fragments: dict[str, Any]
    #: source name -> its body with every ``$ref`` inlined (computed once in :func:`load`;
    #: ``_fill`` builds new containers, so the cached bodies are never mutated)
    expanded: dict[str, Any] = field(default_factory=dict)
    #: not a shipped file: every source's query is rendered under the shipped hard filter
    guarded: bool = False
    #: that filter (the ``filter`` fragment, ``$ref``s inlined) when ``guarded``
    hard_filter: Any = None
    #: the surface document as written (what an editor starts a draft from)
    raw: dict[str, Any] = field(default_factory=dict)

    def expand(self, node: Any) -> Any:
        """The body with every ``$ref`` inlined (directives ``$param``/``$if`` kept)."""
        if isinstance(node, list):
            out: list[Any] = []
            for el in node:
                if isinstance(el, dict) and set(el) == {"$ref"}:
                    frag = self.expand(self._fragment(el["$ref"]))
                    out.extend(frag if isinstance(frag, list) else [frag])
                else:
                    out.append(self.expand(el))
            return out
        if isinstance(node, dict):
            if set(node) == {"$ref"}:
                return self.expand(self._fragment(node["$ref"]))
            return {k: self.expand(v) for k, v in node.items()}
        return node

    def _fragment(self, name: Any) -> Any:
        if not isinstance(name, str) or name not in self.fragments:
            raise ConfigError(f"{self.surface}: unknown fragment {name!r}")
        return copy.deepcopy(self.fragments[name])


def _check_refs(node: Any, specs: Mapping[str, ParamSpec], where: str) -> None:
    if isinstance(node, list):
        for el in node:
            _check_refs(el, specs, where)
    elif isinstance(node, dict):
        for key in ("$param", "$if"):
            if key in node and (not isinstance(node[key], str) or node[key] not in specs):
                raise ConfigError(f"{where}: {key} names undeclared parameter {node[key]!r:.80}")
        if "$if" in node and set(node) != {"$if", "then"}:
            raise ConfigError(f"{where}: $if takes exactly 'then'")
        for v in node.values():
            _check_refs(v, specs, where)


def _parse(
    surface: str, raw: Any, version: str, partials: Mapping[str, Any], *, guarded: bool
) -> Template:
    """A checked :class:`Template` from a parsed surface document (:class:`ConfigError`)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{surface}: a template is a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"_comment", "params", "fusion", "sources"})
    if unknown:
        raise ConfigError(f"{surface}: unknown keys {unknown}; have params, fusion, sources")
    own = raw.get("params", {})
    if not isinstance(own, Mapping) or not all(isinstance(d, Mapping) for d in own.values()):
        raise ConfigError(f"{surface}: 'params' maps names to declarations (objects)")
    decls = {**partials.get("params", {})}
    for name, decl in own.items():
        decls[name] = {**decls.get(name, {}), **decl}
    try:
        specs = {name: ParamSpec.from_decl(name, d) for name, d in decls.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{surface}: bad parameter declaration: {exc}") from exc
    sources = raw.get("sources")
    if not isinstance(sources, Mapping) or not sources:
        raise ConfigError(f"{surface}: 'sources' must map source names to {{requires, body}}")
    fusion = raw.get("fusion", {})
    if not isinstance(fusion, Mapping) or {"$param", "$if", "$ref"} & set(fusion):
        # a directive in place of the whole fusion rendered to a number or nothing: an
        # AttributeError (HTTP 500) on the playground, or on every request that left it unset
        raise ConfigError(f"{surface}: 'fusion' must be an object (not a directive)")
    tpl = Template(
        surface=surface,
        version=version,
        doc=str(raw.get("_comment", "")),
        specs=specs,
        fusion=dict(fusion),
        sources=dict(sources),
        fragments=partials.get("fragments", {}),
        guarded=guarded,
        raw=copy.deepcopy(dict(raw)),
    )
    for name, src in tpl.sources.items():
        where = f"{surface}.{name}"
        if not isinstance(src, Mapping) or not isinstance(src.get("body"), Mapping):
            raise ConfigError(f"{where}: a source is {{requires: [...], body: {{...}}}}")
        requires = src.get("requires", [])
        if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
            raise ConfigError(f"{where}: 'requires' must be a list of parameter names")
        for req in requires:
            if req not in specs:
                raise ConfigError(f"{where}: requires undeclared parameter {req!r}")
        tpl.expanded[name] = tpl.expand(src["body"])
        _check_refs(tpl.expanded[name], specs, where)
    _check_refs(tpl.fusion, specs, f"{surface}.fusion")
    if guarded:
        return replace(tpl, hard_filter=tpl.expand({"$ref": HARD_FILTER}))
    for name, src in tpl.sources.items():  # a shipped file is rendered as written
        missing = sorted(HARD_FRAGMENTS - _reached(src["body"], tpl.fragments))
        if missing:
            raise ConfigError(
                f"{surface}.{name}: the source does not apply the hard rules' fragments "
                f'{missing} (keep {{"$ref": "{HARD_FILTER}"}} in its query)'
            )
    return tpl


def _reached(node: Any, fragments: Mapping[str, Any], seen: set[str] | None = None) -> set[str]:
    """The fragment names ``node`` ``$ref``s, directly or through other fragments."""
    seen = set() if seen is None else seen
    if isinstance(node, list):
        for el in node:
            _reached(el, fragments, seen)
    elif isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            _reached(fragments.get(ref), fragments, seen)
        for value in node.values():
            _reached(value, fragments, seen)
    return seen


@cache
def load(surface: str) -> Template:
    """Parse and check one shipped template (cached; files are read once per process)."""
    if surface.startswith("_") or surface not in surfaces():
        raise TemplateParamError(f"unknown surface {surface!r}; have {surfaces()}")
    ptext, partials = _read(_PARTIALS)
    text, raw = _read(surface)
    version = hashlib.sha256((ptext + "\0" + text).encode()).hexdigest()[:12]
    return _parse(surface, raw, f"{surface}@{version}", partials, guarded=False)


def template_from_doc(surface: str, raw: Any, label: str | None = None) -> Template:
    """A template that is not a shipped file (a promoted version, a playground draft): the
    surface document ``raw`` parsed with the shipped partials and *guarded* (see the module
    docstring). Named ``<label>@<content hash>`` (label defaults to ``<surface>-draft``).
    Any problem is a :class:`TemplateParamError` naming what is wrong."""
    if surface.startswith("_") or surface not in surfaces():
        raise TemplateParamError(f"unknown surface {surface!r}; have {surfaces()}")
    ptext, partials = _read(_PARTIALS)
    try:
        text = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TemplateParamError(f"{surface}: the template is not JSON: {exc}") from exc
    digest = hashlib.sha256((ptext + "\0" + text).encode()).hexdigest()[:12]
    try:
        tpl = _parse(
            surface, raw, f"{label or surface + '-draft'}@{digest}", partials, guarded=True
        )
    except TemplateParamError:
        raise
    except ConfigError as exc:
        raise TemplateParamError(str(exc)) from exc
    # the request sets these whenever the shipped template declares them: keep them declared,
    # as shipped (a narrower type or bound would fail requests; a text type clips the value)
    shipped = load(surface).specs
    dropped = sorted((set(shipped) & REQUEST_PARAMS) - set(tpl.specs))
    if dropped:
        raise TemplateParamError(
            f"{surface}: the template must declare {dropped} (every request sets them)"
        )
    changed = sorted(
        n
        for n in set(shipped) & REQUEST_PARAMS
        if replace(tpl.specs[n], doc="") != replace(shipped[n], doc="")
    )
    if changed:
        raise TemplateParamError(
            f"{surface}: the template redeclares {changed}; every request sets them, so they "
            "keep their shipped declarations"
        )
    return tpl


def template_version(surface: str | None = None) -> str:
    """Content hash of a surface's template (or of all of them, for the API to report)."""
    if surface is not None:
        return load(surface).version
    joined = "|".join(load(s).version for s in surfaces())
    return "templates@" + hashlib.sha256(joined.encode()).hexdigest()[:12]


_DROP = object()
_SCALARS = (str, int, float, bool, type(None))


def _copy(value: Any) -> Any:
    """A parameter value for the rendered body: scalars as they are, flat lists of scalars
    (ids, vectors) by slice, anything else deep-copied (the caller may mutate the body)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value):
        return value[:]
    return copy.deepcopy(value)


def _fill(node: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(node, list):
        out = []
        for el in node:
            got = _fill(el, values)
            if got is not _DROP:
                out.append(got)
        return out
    if isinstance(node, dict):
        if "$param" in node:
            return _copy(values[node["$param"]])
        if "$if" in node:
            return _fill(node["then"], values) if is_set(values[node["$if"]]) else _DROP
        out_d = {}
        for k, v in node.items():
            got = _fill(v, values)
            if got is not _DROP:
                out_d[k] = got
        return out_d
    return node


def _guard(body: Mapping[str, Any], hard_filter: Any) -> dict[str, Any]:
    """``body`` with its query as the scoring clause of a bool whose filter is the hard one."""
    out = dict(body)
    query = out.get("query")
    out["query"] = {"bool": {"must": [query] if query is not None else [], "filter": [hard_filter]}}
    return out


def render(
    surface: str, params: Mapping[str, Any] | None = None, template: Template | None = None
) -> dict[str, Any]:
    """Validated, fully rendered request bodies of one surface (pure; touches no client).

    ``template`` replaces the shipped file (a version or a draft of this surface; its sources
    are guarded by the hard filter). Returns ``{"surface", "version", "sources": {name: search
    body}, "fusion": {...}, "skipped": [sources whose required parameters are unset]}``.
    """
    tpl = template if template is not None else load(surface)
    if tpl.surface != surface:
        raise TemplateParamError(f"a {tpl.surface} template cannot render {surface}")
    values = validate_params(tpl.specs, params or {}, surface)
    hard = _fill(tpl.hard_filter, values) if tpl.guarded else None
    sources: dict[str, Any] = {}
    skipped: list[str] = []
    for name, src in tpl.sources.items():
        if all(is_set(values[r]) for r in src.get("requires", [])):
            body = _fill(tpl.expanded[name], values)
            sources[name] = _guard(body, hard) if tpl.guarded else body
        else:
            skipped.append(name)
    return {
        "surface": surface,
        "version": tpl.version,
        "sources": sources,
        "fusion": _check_fusion(surface, _fill(copy.deepcopy(tpl.fusion), values)),
        "skipped": skipped,
    }


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_fusion(surface: str, fusion: dict[str, Any]) -> dict[str, Any]:
    """The rendered fusion as :func:`~opendisco.queries.fuse` reads it (TemplateParamError)."""
    rc = fusion.get("rank_constant", 60)
    weights = fusion.get("weights", {})
    share = fusion.get("explore_share", 0.0)
    source = fusion.get("explore_source")
    if not _number(rc) or rc < 0:
        raise TemplateParamError(f"{surface}.fusion: rank_constant must be a number >= 0")
    if not isinstance(weights, Mapping) or not all(_number(w) for w in weights.values()):
        raise TemplateParamError(f"{surface}.fusion: weights must map sources to numbers")
    if share is not None and (not _number(share) or not 0 <= share <= 1):
        raise TemplateParamError(f"{surface}.fusion: explore_share must be within 0..1")
    if source is not None and not isinstance(source, str):
        raise TemplateParamError(f"{surface}.fusion: explore_source must name a source")
    return fusion
