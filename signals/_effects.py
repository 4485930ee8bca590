"""What a batch of claimed events writes, worked out before any write (pure).

:func:`plan_effects` maps the events an :class:`~opendisco.signals.EventProcessor` call has
claimed, and the items they are about, to the increments of every store they touch — so the
rules (which events count where) live in one place and are testable without a server:

* ``by_user``: each member's events for the user state (all types, signed weights);
* ``impressions``: exposure counter increments — an impression on a member profile that names
  a served list (``request_id``) is left out when the API counts the lists it serves
  (``exposure_count_served``): it was counted when served;
* ``likes``: ``(liker, liked member, profile)`` for likes/matches of profiles (mutual likes);
* ``blocks``: ``(blocker, blocked member)``: hiding a member's profile blocks that member, both
  ways (see ``signals._blocks``);
* ``inbound``: attention a recipient receives (likes/matches/messages of *profiles* only: a
  movie liked by many is popular, not overloaded);
* ``trend``: ``(item, when, weight)`` of likes/matches, for the live decayed counts.

User state, mutual likes and blocks are idempotent; the other effects add on every application
(:class:`Additive`): an event records each one a failed call completed for it, and a retry
applies only the rest (:func:`pending`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from opendisco._domain import maybe_profile, readable_id

from ._event import INBOUND_TYPES, MUTUAL_TYPES, Event

__all__ = ["Additive", "Effects", "pending", "plan_effects"]


class Additive(StrEnum):
    """The effects a second application would add again (stored in ``events.done``)."""

    GRAPH = "graph"  # co-engagement weights
    INBOUND = "inbound"  # inbound attention counters
    EXPOSURE = "exposure"  # exposure counters (engine)
    TREND = "trend"  # live decayed like/match counts (engine)


@dataclass(frozen=True)
class Effects:
    by_user: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    impressions: Counter[str] = field(default_factory=Counter)
    likes: list[tuple[str, str, str]] = field(default_factory=list)
    blocks: list[tuple[str, str]] = field(default_factory=list)
    inbound: list[tuple[str, datetime]] = field(default_factory=list)
    trend: list[tuple[str, datetime, float]] = field(default_factory=list)


def plan_effects(
    events: Sequence[Event],
    items: Mapping[str, Mapping[str, Any]],
    weights: Mapping[str, float],
    *,
    count_served: bool,
) -> Effects:
    """Pure: the store increments of ``events`` (see the module docstring)."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    impressions: Counter[str] = Counter()
    likes, blocks, inbound, trend = [], [], [], []
    for ev in events:
        w = weights.get(ev.type, 0.0)
        by_user[ev.user_id].append(
            {"id": ev.id, "type": ev.type, "item_id": ev.item_id, "ts": ev.ts, "weight": w}
        )
        it = items.get(ev.item_id, {})
        # a profile for what it grants (a like's match, inbound attention, served counting);
        # ``maybe_profile`` for what a rule takes away (a hide's block): the safe side of each
        profile = it.get("kind") == "profile"
        if ev.type == "impression" and not (count_served and ev.request_id and profile):
            impressions[ev.item_id] += 1
        if ev.type in MUTUAL_TYPES and profile:
            likes.append((ev.user_id, str(it.get("owner_id") or ev.item_id), ev.item_id))
        owner = it.get("owner_id")  # a hide blocks the member of whatever may be a profile
        if ev.type == "hide" and maybe_profile(it.get("kind")) and owner and readable_id(owner):
            blocks.append((ev.user_id, str(owner)))
        if ev.type in INBOUND_TYPES and profile and ev.ts is not None:
            inbound.append((ev.item_id, ev.ts))
        if ev.type in MUTUAL_TYPES and ev.ts is not None:
            trend.append((ev.item_id, ev.ts, weights.get(ev.type, 1.0)))
    return Effects(dict(by_user), impressions, likes, blocks, inbound, trend)


def pending(
    events: Sequence[Event], done: Mapping[str, Collection[str]], effect: Additive
) -> list[Event]:
    """Pure: the ``events`` that have not had ``effect`` yet (``done``: event id -> the
    additive effects an earlier, failed call completed for it)."""
    return [ev for ev in events if effect not in done.get(ev.id, ())]
