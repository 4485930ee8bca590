"""The claim status of a stored event (pure): applied, in flight, or expired and free to be
taken over (:mod:`._claims` for the claims themselves)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opendisco._holder import held_until_over

from ._event import Event, about, stored_about

__all__ = ["NOT_STORED", "PROJECTION", "ClaimStatus", "classify", "reused"]

#: fields of an ``events`` document that describe its claim (and the additive effects a
#: failed holder completed: ``done``)
PROJECTION = dict.fromkeys(
    ("applied", "claim_gen", "claim_expires", "claim_host", "claim_pid", "claim_started",
     "done", "claim_marks",
     # what the stored event is about: a later event with its id about something else is
     # not a retry of it
     "type", "user_id", "item_id"),
    1,
)  # fmt: skip


@dataclass(frozen=True)
class ClaimStatus:
    """What a stored event's claim says, classified at ``now`` (see the module docstring)."""

    applied: bool
    gen: int
    expired: bool
    #: additive effects already applied by a holder that failed later (not to add again)
    done: frozenset[str] = frozenset()
    #: ``(type, user_id, item_id)`` of the stored event (None: it is gone)
    about: tuple[str, str, str] | None = None
    #: the marks of the calls that held it (their counter writes': see :meth:`EventClaims.stamp`)
    marks: frozenset[str] = frozenset()


#: the claim status of a posted event whose id no stored document holds (:meth:`status`)
NOT_STORED = ClaimStatus(applied=False, gen=0, expired=False)


def classify(doc: Mapping[str, Any] | None, now: datetime) -> ClaimStatus:
    """Pure: the claim state of a stored ``events`` document (None: the event is gone — purged
    after its retention — which counts as applied: nothing is left to do for it)."""
    if doc is None:
        return ClaimStatus(applied=True, gen=0, expired=False)
    return ClaimStatus(
        applied=bool(doc.get("applied")),
        gen=int(doc.get("claim_gen") or 0),
        expired=held_until_over(doc, now, "claim_"),
        done=frozenset(str(s) for s in doc.get("done") or ()),
        about=stored_about(doc),
        marks=frozenset(str(m) for m in doc.get("claim_marks") or ()),
    )


def reused(status: Mapping[str, ClaimStatus], posted: Mapping[str, Event]) -> list[str]:
    """Pure: the ids whose stored event is about something other than the one ``posted``
    with that id (not a retry of it)."""
    return [i for i, st in status.items() if st.about is not None and st.about != about(posted[i])]
