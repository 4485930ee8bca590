"""Filling a page a failed candidate source left short (:attr:`Discovery.fill`).

When one source of the request failed (``CandidateSet.degraded``: a sub-search refused, cut
short, left out) and the other sources' candidates that passed the filters are fewer than
the page, a :class:`FillSource` (the API's degraded fallback, its per-segment lists) proposes
up to :data:`FILL_FACTOR` times what is missing. They join the request's candidates before
everything that keeps an answer safe and accountable: the caps this process knows and the
filters (the hard rules), the features and the ranking, the page's re-check against MongoDB
and its caps, the count toward exposure, and the served-list log, where their rows are
marked ``filled`` (``ServedList.filled``: the learning loop leaves them out). Filling in the
API after the pipeline would show items the log and the exposure count never saw. With no
source failed nothing runs (no latency); the source itself answers within the request's
deadline, or with nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Protocol

from opendisco._exceptions import SearchBackendError
from opendisco.queries import Candidate, CandidateSet

from ._caps import ExposureCaps
from ._types import CandidatePlan

if TYPE_CHECKING:
    from ._stages import CandidateFilter

__all__ = ["FILL_FACTOR", "FillSource", "fill_page", "filled_rows"]

#: fill candidates asked per item a failed source left missing (room for the page's re-check)
FILL_FACTOR = 2


class FillSource(Protocol):
    """Up to ``n`` candidates, none of ``have``, for the request ``plan`` (its rules allow
    them on the fields it knows), within the request's deadline: none when it cannot
    confirm them in time."""

    name: str

    async def fill(
        self, plan: CandidatePlan, n: int, have: AbstractSet[str]
    ) -> list[Candidate]: ...


async def fill_page(
    plan: CandidatePlan,
    cs: CandidateSet,
    source: FillSource | None,
    caps: ExposureCaps,
    filters: Sequence[CandidateFilter],
) -> frozenset[str]:
    """``cs`` filled when a source failed and it is short of the page (module docstring):
    the candidates added, through ``caps`` and ``filters``; their ids.

    A failed source's set left with no candidate at all is no answer (:class:`SearchBackendError`,
    so the API answers from its checked fallback): the sources that answered may have answered
    without the part that failed the others (``cold_start``'s ``fresh``, with no fresh item,
    is rewritten by the engine to match nothing before its cap-list lookup is read), and an
    empty page, degraded, was served as if nobody were eligible."""
    missing = plan.k - len(cs.candidates)
    if source is None or not cs.degraded or missing <= 0:
        _not_empty(cs)
        return frozenset()
    t0 = time.perf_counter()
    extra = await source.fill(plan, FILL_FACTOR * missing, frozenset(cs.ids))
    caps.apply(plan, extra)
    for f in filters:
        extra = f.keep(plan, extra)
    cs.candidates += extra
    plan.timings_ms["fill_ms"] = (time.perf_counter() - t0) * 1e3
    _not_empty(cs)
    return frozenset(c.id for c in extra)


def _not_empty(cs: CandidateSet) -> None:
    if cs.degraded and not cs.candidates:
        raise SearchBackendError(f"{cs.surface}: no candidate, sources failed: {cs.errors}")


def filled_rows(ids: Sequence[str], filled: AbstractSet[str]) -> list[int]:
    """The rows of ``ids`` (a batch's) that ``filled`` holds."""
    return [r for r, i in enumerate(ids) if i in filled] if filled else []
