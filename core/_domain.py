"""Concepts every layer names: surfaces and ids (one definition each)."""

from __future__ import annotations

import logging
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from ._exceptions import StoreBackendError

log = logging.getLogger("opendisco")

__all__ = [
    "ID_MAX_LENGTH",
    "ID_PATTERN",
    "KINDS",
    "MEMBER_RULE_FIELDS",
    "USERS_COLLECTION",
    "USER_SURFACES",
    "Id",
    "Surface",
    "UserSurface",
    "is_api_id",
    "maybe_profile",
    "readable_id",
    "stored_ids",
]


class Surface(StrEnum):
    """A surface: one query template file in ``queries/templates/`` each (a test checks)."""

    for_you = "for_you"
    cold_start = "cold_start"
    trending = "trending"
    similar = "similar"
    search = "search"


#: surfaces answered from a member alone (the others need an item or a query text)
USER_SURFACES: tuple[Surface, ...] = (Surface.for_you, Surface.cold_start, Surface.trending)
#: the same subset as an enum (API parameter and CLI choices), derived from :class:`Surface`
UserSurface = StrEnum("UserSurface", {s.name: s.value for s in USER_SURFACES})  # type: ignore[misc]

#: user and item ids: a conservative charset (item ids are OpenSearch ``_id``s, ≤ 512 bytes)
ID_MAX_LENGTH = 512
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,511}$"
Id = Annotated[str, Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
_ID = re.compile(ID_PATTERN)


def is_api_id(value: str) -> bool:
    """Whether ``value`` is an id the API takes (:data:`Id`; all of it: ``re.match`` let a
    trailing newline through ``$``)."""
    return _ID.fullmatch(value) is not None


#: the MongoDB collection of the members' documents (``_id``: the member id; their side of the
#: rules, :data:`MEMBER_RULE_FIELDS`), read by serving, the API, verify and experiments
USERS_COLLECTION = "users"


#: the item kinds (MongoDB ``items.kind``; ``opendisco.ingest`` indexes no other)
KINDS = frozenset({"profile", "movie", "listing", "product"})
_NOT_PROFILES = KINDS - {"profile"}


#: a member's side of the two-sided rules (``serving.HardRules``), stored twice: in their
#: ``users`` document, read when they view, and in their profile (an item of kind ``profile``),
#: read when they are the candidate; ``opendisco verify`` reports profiles where they differ
MEMBER_RULE_FIELDS = ("gender", "age", "pref_genders", "pref_age_min", "pref_age_max")


def maybe_profile(kind: Any) -> bool:
    """Whether an item of stored kind ``kind`` is, or may be, a member's profile: any kind but
    the other known ones (none, a typo, a list: what ingest refuses, and what MongoDB may hold
    while the engine keeps an earlier copy). The rules about members fail closed on it: read as
    no profile, a profile stored as ``"Profile"`` skipped the viewer's preferences in the page's
    re-check, and its hide while the engine was down blocked nobody."""
    return not (isinstance(kind, str) and kind in _NOT_PROFILES)


def readable_id(value: Any) -> bool:
    """Whether a stored value reads as an id: a string, or an integer (its digits: a member
    ``42`` is ``"42"``); a float, a boolean, a list or a document does not."""
    return isinstance(value, str | int) and not isinstance(value, bool)


def stored_ids(value: Any, what: str, *, salvage: bool = False) -> list[str]:
    """A list of ids as a MongoDB document holds it (``what``: the field, for the error), as
    strings: none stated (None), none; one id stored alone (a string, an integer), that id (a
    string iterated as a list was read character by character: a block of ``"sb"`` blocked
    the members ``s`` and ``b``, not sb); a list, its ids. Anything else holds ids that cannot
    be read: :class:`StoreBackendError` (fail closed: a read of the member's rules fails, and
    with it the answer: 503, never a list that skipped them; the error names the field, never
    the stored ids: who blocked the member). ``salvage`` (a writer about to rewrite the
    document clean): every id found in it, a document's keys and values too (more ids block
    or exclude more: the safe side), logged — failing there kept the other member's side of
    a block unwritten, and held back every event of the batch."""
    if value is None:
        return []
    values = [value] if readable_id(value) else value if isinstance(value, list | tuple) else None
    if values is not None and all(readable_id(v) for v in values):
        return [str(v) for v in values]
    if not salvage:
        raise StoreBackendError(f"{what} holds no list of ids")
    log.error("%s holds no list of ids (rewritten with every id found in it): %r", what, value)
    return list(dict.fromkeys(_every_id(value)))


def _every_id(value: Any) -> list[str]:
    """Every id in a stored value: itself, or in its items, a document's keys and values."""
    if readable_id(value):
        return [str(value)]
    if isinstance(value, list | tuple):
        return [i for v in value for i in _every_id(v)]
    if isinstance(value, dict):
        return [*(str(k) for k in value), *(i for v in value.values() for i in _every_id(v))]
    return []
