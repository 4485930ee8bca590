"""Exposure caps within this process: the ``exposure_cap`` hard rule on the served path.

The candidate queries leave out the items on the engine's cap list (``_capped``), but that
list changes only when served impressions reach the counters: every ``exposure_flush_s``
(1 s), later while a flush fails. Between two, one API process showed an item as often as it
was asked for it — an ``exposure_cap`` of 3 at 2 counted impressions went to ten members in a
second. So this process also leaves out every candidate whose impressions *known to it* reach
its cap (:class:`~opendisco.signals.KnownImpressions`, the one definition the degraded
fallback checks too): the count in its copy of the counters (``ExposureMirror.known``) plus
what it served since that copy's read. The item's cap is its own ``exposure_cap`` (a field
of the candidate hit; on the page, as MongoDB holds it when the page's re-check read it) or
``exposure_default_cap``.

Checked twice, with no round trip:

* the filters stage (:meth:`ExposureCaps.apply`): the candidates at their cap join the
  request's :class:`~opendisco.serving.HardRules` (``capped_ids``) and are dropped by the
  hard-rules filter, counted in ``explain.filtered["exposure_cap"]``;
* the page (:class:`PageCaps`, from ``serving._page.pick_page``): after the page's re-check
  — its last await — the page's items are checked again, on the caps that read returned
  (the engine's copy trails an ``exposure_cap`` the app lowered in MongoDB, for good while
  no sync runs: 100 → 3 went to every member), and, when none reached its cap, the
  page is counted at once (``count``: the API), before any other request runs: the event
  loop is the only thread, so two requests in flight cannot both take an item's last
  impression. One that reached it meanwhile is dropped and the page picked again from the
  order (counted in ``explain.filtered`` too).

Counting at the pick rather than when the API sends the answer closes the gap between the
two: the answer's task ends, the route resumes a loop turn later, and another request picked
the same item meanwhile. A page counted is one the API answers with (nothing awaits after
the pick); the route then does not count it again (``Recommendations.counted``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opendisco.queries import Candidate
from opendisco.signals import ExposureMirror

if TYPE_CHECKING:
    from ._types import CandidatePlan

__all__ = ["ExposureCaps", "PageCaps"]

#: counts a page toward exposure (``Writes.shown``: response-shaped items ``{"id", "item"}``,
#: the request's id)
Count = Callable[[Sequence[Mapping[str, Any]], str | None], None]


@dataclass
class ExposureCaps:
    """The caps this process knows reached, over its copy of the counters (``mirror``)."""

    mirror: ExposureMirror
    #: counts each page when it is picked (the API's process); None: nothing counted
    count: Count | None = None

    def reached(self, items: Iterable[tuple[str, Any]]) -> set[str]:
        """The ids of ``(id, the item's own exposure_cap)`` whose known impressions reach the
        item's cap now."""
        return self.mirror.known().reached(items)

    def apply(self, plan: CandidatePlan, candidates: Sequence[Candidate]) -> None:
        """The filters stage's half: the candidates at their cap join the request's rules."""
        at_cap = self.reached((c.id, c.item.get("exposure_cap")) for c in candidates)
        if at_cap:
            plan.rules = plan.rules.with_capped((plan.rules.capped_ids or frozenset()) | at_cap)

    def page(self, candidates: Sequence[Candidate], request_id: str | None = None) -> PageCaps:
        """The page check of one request over its candidates."""
        return PageCaps(self, {c.id: c.item for c in candidates}, request_id)


@dataclass(frozen=True)
class PageCaps:
    """One request's page: :meth:`reached` and :meth:`take` run in one step of the event loop
    (``pick_page``: no await between them)."""

    caps: ExposureCaps
    items: Mapping[str, Mapping[str, Any]]
    request_id: str | None = None

    def reached(self, ids: Sequence[str], stored: Mapping[str, Any]) -> set[str]:
        """The ids at their cap now: the cap ``stored`` holds for an id the page re-read from
        MongoDB (None: none of its own), else its hit's (the engine's copy)."""
        own = self.items
        return self.caps.reached(
            (i, stored[i] if i in stored else own[i].get("exposure_cap")) for i in ids
        )

    def take(self, ids: Sequence[str]) -> bool:
        """Count the page toward exposure; whether it was counted (a caller that counts)."""
        if self.caps.count is None:
            return False
        self.caps.count([{"id": i, "item": self.items[i]} for i in ids], self.request_id)
        return True
