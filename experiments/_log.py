"""Both-sided exposure logs: one document per served list in an experiment.

``experiment_exposures``: ``{_id, at, viewer, surface, version, degraded, experiments: [the
request's assignment records], items: [{id, owner, position}]}`` — the viewer side (who saw
what, in which arm, cluster or period) and the candidate side (every shown member, its arm in
pair-level designs, and — for treated viewers — the batch's candidates per arm). With the
events (likes received, matches) this is what ``opendisco experiments report`` reads.
Written by a background task in batches of at most 50 (FerretDB); a store outage drops
(and counts) documents, never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opendisco._cancel import raise_lost_cancel
from opendisco.serving import CandidatePlan, Recommendations

from ._assign import served_candidate_arm

if TYPE_CHECKING:
    from ._serving import ExperimentRegistry

__all__ = ["EXPOSURES", "ExperimentLog", "exposure_record"]

log = logging.getLogger("opendisco.experiments")

EXPOSURES = "experiment_exposures"


class ExperimentLog:
    """``after()`` queues a document and returns; a background task writes batches. It also
    names each shown candidate's arm in pair-level records the ranking did not fill (the
    lists of control viewers of a two-sided experiment), so responses carry them too."""

    def __init__(
        self,
        db: Any,
        registry: ExperimentRegistry | None = None,
        max_queue: int = 50_000,
        batch: int = 50,
    ) -> None:
        self.registry = registry
        self.coll = db[EXPOSURES]
        self.queue: list[dict[str, Any]] = []
        self.max_queue = max_queue
        self.batch = batch
        self.written = 0
        self.dropped = 0
        self.name = "experiment_log"
        self._task: asyncio.Task[None] | None = None

    def _candidate_arms(self, recs: Recommendations) -> None:
        """Each shown candidate's arm in every pair-level record. A treated viewer's ranking
        records the arms of its top k, which are not the items shown when the answer was
        explored (a page drawn from further down) or the page's re-check dropped some (the
        store made them unavailable, or no longer eligible, since the last sync): those
        records are recomputed too; a record of an experiment no longer running keeps the
        shown ones alone (``Recommendations`` names no other: it stopped while the request
        was in flight, and the answer named unavailable members it never showed)."""
        if self.registry is None:
            return
        shown = recs.ids
        by_id = {r.experiment.id: r.experiment for r in self.registry.running}
        for rec in recs.experiments:
            exp = by_id.get(str(rec.get("experiment")))
            if exp is None or not exp.pair_level:
                continue
            if "candidates" in rec and list(rec["candidates"]) == shown:
                continue
            names = [a.name for a in exp.arms]
            reg = self.registry
            rec["candidates"] = {
                r.id: names[
                    served_candidate_arm(
                        exp, str(r.item.get("owner_id") or r.id), reg.holdout, reg.holdout_salt
                    )
                ]
                for r in recs.items
            }

    def after(self, plan: CandidatePlan, recs: Recommendations) -> None:
        if not recs.experiments or all(e.get("holdout") for e in recs.experiments):
            return
        self._candidate_arms(recs)
        if len(self.queue) >= self.max_queue:
            self.dropped += 1
            return
        self.queue.append(
            {
                "_id": uuid.uuid4().hex,
                "at": datetime.now(UTC),
                "viewer": plan.user_id,
                "surface": recs.surface,
                "version": recs.version,
                "degraded": recs.degraded,
                "experiments": recs.experiments,
                "items": [
                    {"id": r.id, "owner": r.item.get("owner_id"), "position": p}
                    for p, r in enumerate(recs.items)
                ],
            }
        )
        with contextlib.suppress(RuntimeError):  # no running loop: drain() writes later
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0.05)
        await self.drain()

    async def drain(self) -> int:
        """Write everything queued (batches of ``batch``), after any write in flight (so a
        shutdown drain does not close the store under it); returns documents written here."""
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            await asyncio.wait([task])
        n = 0
        while self.queue:
            docs, self.queue = self.queue[: self.batch], self.queue[self.batch :]
            try:
                await self.coll.insert_many(docs, ordered=False)
                n += len(docs)
                self.written += len(docs)  # counted also when a cancel ends the drain
            except Exception as exc:  # the store is down: exposure logs are best effort
                self.dropped += len(docs)
                log.warning("experiment log write failed (%d dropped): %r", len(docs), exc)
            raise_lost_cancel()  # one the write swallowed, or answered with its own error
        return n


def exposure_record(doc: Any, exp_id: str) -> dict[str, Any] | None:
    """The experiment's record of an exposure document as :class:`ExperimentLog`
    writes it, or None (not the experiment's, or not such a document: written by other
    code, edited; one of those failed the report with a KeyError or AttributeError)."""
    recs = doc.get("experiments")
    if not isinstance(recs, list):
        return None
    rec = next((r for r in recs if isinstance(r, dict) and r.get("experiment") == exp_id), None)
    items = doc.get("items")
    well_formed = (
        rec is not None
        and isinstance(rec.get("arm"), str)
        and isinstance(rec.get("candidates") or {}, dict)
        and isinstance(doc.get("at"), datetime)
        and isinstance(doc.get("viewer"), str)
        and isinstance(items, list)
        and all(isinstance(i, dict) and isinstance(i.get("id"), str) for i in items)
    )
    if rec is not None and not well_formed:
        log.warning("experiment %s: exposure document %r skipped", exp_id, doc.get("_id"))
    return rec if well_formed else None
