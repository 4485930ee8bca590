"""Concepts every layer names: surfaces and ids (one definition each)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

__all__ = ["ID_MAX_LENGTH", "ID_PATTERN", "USER_SURFACES", "Id", "Surface", "UserSurface"]


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
