"""Typed template parameters: declaration, validation and coercion (pure).

A template declares each parameter as ``{"type": ..., "default": ..., "doc": ...}`` plus
type-specific bounds. Values are validated here and then placed into the query structure as
JSON values by the renderer — user text is never spliced into JSON text.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opendisco._exceptions import TemplateParamError

__all__ = ["REQUEST_PARAMS", "ParamSpec", "clip_terms", "validate_params"]

TYPES = ("int", "float", "bool", "str", "text", "str_list", "vector", "geo", "date")
_MISSING = object()
# Lucene counts every term clause against indices.query.bool.max_clause_count (1024); a
# multi_match over three fields multiplies the terms, so long texts keep their first terms,
# counted at least as finely as the engine's standard tokenizer (UAX #29) cuts them
# (``_term_ends``). Counted as ``\w+`` runs, 1000 Han ideographs were one term, 1000 emoji
# none and "aア" * 500 one: too many clauses, and the lexical sources failed.
_TERM = re.compile(r"\S+")
_ASCII_TERM = re.compile(r"\w+", re.ASCII)
#: letters (and ASCII or full-width digits) that form words with each other across these
#: alphabetic scripts: Latin, Greek, Cyrillic, Armenian, Hebrew, Arabic, the Indic scripts,
#: Georgian, Hangul, full-width Latin
_WORD = (
    (0x00C0, 0x058F), (0x0591, 0x05F4), (0x0610, 0x06FF), (0x0750, 0x077F), (0x0900, 0x0DFF),
    (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x1E00, 0x1FFF), (0x3131, 0x318E), (0xAC00, 0xD7A3),
    (0xFF21, 0xFF3A), (0xFF41, 0xFF5A),
)  # fmt: skip
#: scripts whose letters form words of their own script only: Katakana, South-East Asian
_KANA = ((0x30A1, 0x30FA), (0x30FC, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))
_SEA = (
    (0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x1950, 0x19DF), (0x1A20, 0x1AAF),
    (0xAA60, 0xAADF),
)  # fmt: skip
#: letters assigned by Unicode 3.2 (2002) only join words: a later one may be unknown to the
#: engine's tables, and an unknown character breaks words like a space
_OLD = unicodedata.ucd_3_2_0
_DATE_MATH = re.compile(r"now(-\d{1,5}[yMwdhms])?(/[yMwdhms])?")

#: the template parameters every request sets from the member, the caller and the settings
#: (plus the graph neighbours the pipeline adds): a params file or draft never overrides
#: them — they carry the hard rules (viewer preferences, exclusions, caps) and the index
REQUEST_PARAMS = frozenset(
    {
        "k",
        "now",
        "index",
        "exclude_ids",
        "exposure_index",
        "viewer_gender",
        "viewer_age",
        "viewer_pref_genders",
        "viewer_pref_age_min",
        "viewer_pref_age_max",
        "viewer_id",  # the viewer's own profile (self-exclusion)
        "exclude_owners",
        "location",
        "user_vector",
        "behaviour_vector",
        "interests",
        "interests_text",
        "fresh_since",
        "query_text",
        "query_vector",
        "item_id",
        "item_vector",
        "viewer_gender_unknown",  # the hard rules' fail-closed flags (HardRules.engine_params)
        "viewer_age_unknown",
        "graph_ids",
        "graph_weights",
        "itemsim_ids",
        "itemsim_weights",
    }
)


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    default: Any = _MISSING
    nullable: bool = False
    doc: str = ""
    min: float | None = None
    max: float | None = None
    max_len: int | None = None
    max_items: int | None = None
    max_terms: int | None = None
    choices: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_decl(cls, name: str, decl: Mapping[str, Any]) -> ParamSpec:
        if decl.get("type") not in TYPES:
            raise TemplateParamError(f"parameter {name!r}: unknown type {decl.get('type')!r}")
        known = {
            "type",
            "default",
            "nullable",
            "doc",
            "min",
            "max",
            "max_len",
            "max_items",
            "max_terms",
            "choices",
        }
        extra = set(decl) - known
        if extra:
            raise TemplateParamError(f"parameter {name!r}: unknown keys {sorted(extra)}")
        _check_decl(name, decl)
        opts = {k: v for k, v in decl.items() if k != "choices"}
        spec = cls(name=name, choices=tuple(decl.get("choices", ())), **opts)
        if spec.default is not _MISSING and spec.default is not None:
            spec.coerce(spec.default)  # a bad default is a template bug: fail on load
        return spec

    @property
    def required(self) -> bool:
        return self.default is _MISSING and not self.nullable

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.default is not _MISSING:
            out["default"] = self.default
        if self.nullable:
            out["nullable"] = True
        if self.doc:
            out["doc"] = self.doc
        return out

    def _fail(self, msg: str) -> TemplateParamError:
        return TemplateParamError(f"parameter {self.name!r} ({self.type}): {msg}")

    def _bounds(self, x: float) -> None:
        if self.min is not None and x < self.min:
            raise self._fail(f"{x} < min {self.min}")
        if self.max is not None and x > self.max:
            raise self._fail(f"{x} > max {self.max}")

    def _string(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._fail(f"expected a string, got {type(value).__name__}")
        if self.max_len is not None and len(value) > self.max_len:
            raise self._fail(f"{len(value)} characters > max_len {self.max_len}")
        return value

    def coerce(self, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise self._fail("must not be null")
        t = self.type
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise self._fail(f"expected an integer, got {value!r:.40}")
            self._bounds(value)
            return value
        if t == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self._fail(f"expected a number, got {value!r:.40}")
            if not math.isfinite(value):
                raise self._fail("must be finite")
            self._bounds(float(value))
            return float(value)
        if t == "bool":
            if not isinstance(value, bool):
                raise self._fail(f"expected true/false, got {value!r:.40}")
            return value
        if t == "str":
            s = self._string(value)
            if self.choices and s not in self.choices:
                raise self._fail(f"{s!r:.40} not one of {list(self.choices)}")
            return s
        if t == "text":
            s = self._string(value)
            return clip_terms(s, self.max_terms) if self.max_terms else s
        if t == "str_list":
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise self._fail("expected a list of strings")
            if self.max_items is not None and len(value) > self.max_items:
                raise self._fail(f"{len(value)} items > max_items {self.max_items}")
            return [self._string(v) for v in value]
        if t == "vector":
            if isinstance(value, str) or not hasattr(value, "__len__") or len(value) == 0:
                raise self._fail("expected a non-empty list of numbers")
            out = []
            for x in value:
                if isinstance(x, bool | str):
                    raise self._fail("components must be numbers")
                try:
                    f = float(x)
                except (TypeError, ValueError) as exc:
                    raise self._fail("components must be numbers") from exc
                if not math.isfinite(f):
                    raise self._fail("components must be finite")
                out.append(f)
            if self.max_items is not None and len(out) > self.max_items:
                raise self._fail(f"{len(out)} dimensions > {self.max_items}")
            return out
        if t == "geo":
            if not isinstance(value, Mapping) or "lat" not in value or "lon" not in value:
                raise self._fail("expected {lat, lon}")
            try:
                lat, lon = float(value["lat"]), float(value["lon"])
            except (TypeError, ValueError) as exc:
                raise self._fail("lat/lon must be numbers") from exc
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise self._fail(f"out of range: {lat}, {lon}")
            return {"lat": lat, "lon": lon}
        if t == "date":
            if isinstance(value, datetime):
                return self._utc_date(value)
            s = self._string(value)
            if _DATE_MATH.fullmatch(s):
                return s
            try:
                ts = datetime.fromisoformat(s.replace("Z", "+00:00"))
            except ValueError as exc:
                raise self._fail(f"not an ISO-8601 date: {s!r:.40}") from exc
            return self._utc_date(ts)
        raise self._fail("unsupported type")  # pragma: no cover - TYPES is checked on load

    def _utc_date(self, ts: datetime) -> str:
        """``ts`` in UTC to the second, as the engine's ``strict_date_optional_time`` reads it:
        four-digit years (``strftime("%Y")`` wrote year 999 as ``999``, a date the engine
        refused: every query of the template failed) and a :class:`TemplateParamError` for a
        time that leaves datetime's range once in UTC (``9999-12-31T23:00:00-05:00``: an
        ``OverflowError`` escaped template loading)."""
        try:
            utc = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC)
        except OverflowError:
            raise self._fail(f"out of range once in UTC: {ts.isoformat()!r:.40}") from None
        return utc.replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def _check_decl(name: str, decl: Mapping[str, Any]) -> None:
    """The declaration's options have the types ``coerce`` uses (TemplateParamError)."""

    def fail(msg: str) -> TemplateParamError:
        return TemplateParamError(f"parameter {name!r}: {msg}")

    for key in ("min", "max"):
        v = decl.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise fail(f"{key} must be a number, got {v!r:.40}")
    for key in ("max_len", "max_items", "max_terms"):
        v = decl.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise fail(f"{key} must be an integer >= 1, got {v!r:.40}")
    choices = decl.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise fail("choices must be a list of strings")
    if not isinstance(decl.get("nullable", False), bool):
        raise fail("nullable must be true or false")
    if not isinstance(decl.get("doc", ""), str):
        raise fail("doc must be a string")


def _within(c: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= ord(c) <= hi for lo, hi in ranges)


def _word_class(c: str) -> str | None:
    """The word a character may be part of (``w``: the alphabetic scripts, ``k``: Katakana,
    ``s``: South-East Asian), ``""`` when it is ASCII punctuation (no term), None when it is
    a term of its own: a Han ideograph, Hiragana, an emoji, any other digit, symbol or
    letter, any character Unicode 3.2 did not have (more terms than the engine sees only
    clip earlier)."""
    if c.isascii():
        return "w" if c.isalnum() or c == "_" else ""
    letter = (c.isalpha() or unicodedata.category(c)[0] == "M") and _OLD.category(c) != "Cn"
    if (letter and _within(c, _WORD)) or "\uff10" <= c <= "\uff19":
        return "w"
    if letter and _within(c, _KANA):
        return "k"
    if letter and _within(c, _SEA):
        return "s"
    return None


def _term_ends(text: str) -> Iterator[int]:
    """Where each term of ``text`` ends: words of one class (``_word_class``) each, every
    other character that is no space or ASCII punctuation alone."""
    if text.isascii():  # the common case, at regex speed
        yield from (m.end() for m in _ASCII_TERM.finditer(text))
        return
    for m in _TERM.finditer(text):
        run: str | None = ""
        for i, c in enumerate(m.group(), start=m.start()):
            cls = _word_class(c)
            if run and cls != run:
                yield i
            if cls is None:
                yield i + 1
            run = cls
        if run:
            yield m.end()


def clip_terms(text: str, max_terms: int) -> str:
    """The prefix of ``text`` holding its first ``max_terms`` terms (verbatim), counted at
    least as finely as the engine's tokenizer does (``_term_ends``)."""
    ends = [e for _, e in zip(range(max_terms + 1), _term_ends(text), strict=False)]
    return text[: ends[max_terms - 1]] if len(ends) > max_terms else text


def validate_params(
    specs: Mapping[str, ParamSpec], params: Mapping[str, Any], surface: str
) -> dict[str, Any]:
    """Defaults filled in, every value coerced; unknown or missing names are errors."""
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise TemplateParamError(f"{surface}: unknown parameters {unknown}; have {sorted(specs)}")
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in params:
            out[name] = spec.coerce(params[name])
        elif spec.default is not _MISSING:
            out[name] = spec.coerce(spec.default) if spec.default is not None else None
        elif spec.nullable:
            out[name] = None
        else:
            raise TemplateParamError(f"{surface}: missing required parameter {name!r}")
    return out
