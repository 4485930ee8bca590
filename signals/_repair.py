"""User states merged while the engine could not be read, or folded from a behaviour model
no longer served, given their vectors back.

An event batch applied while the engine's item lookup fails (or outlasts
``events_engine_timeout_s``) merges the members' states from MongoDB's copies of the items,
which have no vectors (``_apply.stored_items``): the states keep their old vectors and are
marked ``vectors_stale``. A member's next event applied with the engine up recomputes them;
:func:`repair_vectors` does it for members who post nothing more, from the recovery sweep
(``EventProcessor.sweep``, every ``events_recover_every_s``; each API process runs one).

After ``opendisco train`` publishes a new behaviour model, every member's behaviour vector
names the model before (``UserState.behaviour_model``): serving stops searching with it at
once (``as_served``) and the sweep folds the members again from the new model's item vectors,
``limit`` of them per sweep, unless their next event does it first. Until the engine's item
documents carry the new vectors (the first sync pass after the switch), a fold may still read
some of the old model's.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from opendisco._published import Followed

from ._apply import NO_VECTORS, ItemFetch, item_vectors
from ._folding import needs_refold, recompute
from ._user_state import UserStateConfig, UserStateStore

__all__ = ["repair_vectors"]

log = logging.getLogger("opendisco.signals")


async def repair_vectors(
    states: UserStateStore,
    fetch_items: ItemFetch,
    cfg: UserStateConfig,
    limit: int = 100,
    behaviour: Followed | None = None,
) -> int:
    """Recompute the vectors of up to ``limit`` members whose state is ``vectors_stale`` or
    folded from another behaviour model than the served one (``behaviour``), under their
    leases (a concurrent event of one of them is before or after this); nothing while the
    engine still cannot be read (the next sweep tries again). Returns the states repaired."""
    model = await behaviour.version() if behaviour is not None else None
    users = await states.stale_vectors(limit, model)
    if not users:
        return 0
    async with states.locked(users) as held:
        fresh = await states.get_many(users, salvage=True)  # inside the leases
        stale = {u: st for u, st in fresh.items() if needs_refold(st, model)}
        ids = {e["id"] for st in stale.values() for e in (*st.positives, *st.negatives)}
        items = await fetch_items(sorted(ids)) if ids else {}
        if any(d.get(NO_VECTORS) for d in items.values()):
            return 0
        vecs, behs = item_vectors(items)
        now = datetime.now(UTC)
        await states.save_many(
            (recompute(st, vecs, behs, now, cfg, model) for st in stale.values()),
            previous=stale,
            held=held,
        )
    if stale:
        log.info("folded the vectors of %d members again", len(stale))
    return len(stale)
