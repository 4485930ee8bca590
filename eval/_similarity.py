"""The trained item–item table of an evaluation namespace, fitted on one stage's history.

:func:`write_similarity` fits :func:`opendisco.rerank.ease_neighbours` on the fitting
positives of a :class:`~opendisco.eval.Stage` (``stage.history``: never its targets, nor any
later period) and replaces the namespace's :class:`~opendisco.signals.ItemSimilarity` rows, as
a production trainer would from the logged likes before it serves. The learning loop writes
the pre-period's table into its namespace; the test replay the whole fitting period's.
"""

from __future__ import annotations

import asyncio

from opendisco import clients
from opendisco._settings import Settings
from opendisco.rerank import ease_neighbours
from opendisco.signals import ItemSimilarity

from ._split import Stage

__all__ = ["SIMILARITY_TOP_N", "similarity_rows", "write_similarity"]

#: neighbours kept per item (a request sums ≤ 50 rows of this many weights)
SIMILARITY_TOP_N = 100


def similarity_rows(
    stage: Stage, *, lam: float, max_items: int = 3000, top_n: int = SIMILARITY_TOP_N
) -> dict[str, dict[str, float]]:
    """EASE rows fitted on ``stage``'s fitting positives only (pure)."""
    return ease_neighbours(
        stage.matrix, [str(i) for i in stage.items], lam=lam, max_items=max_items, top_n=top_n
    )


async def _write(settings: Settings, rows: dict[str, dict[str, float]], version: str) -> int:
    mongo = clients.mongo_async(settings)
    try:
        return await ItemSimilarity(mongo[settings.mongo_db]).replace(rows, version)
    finally:
        await mongo.close()


def write_similarity(
    settings: Settings,
    stage: Stage,
    *,
    lam: float,
    max_items: int = 3000,
    top_n: int = SIMILARITY_TOP_N,
) -> int:
    """Fit the rows on ``stage``'s history and replace the namespace's table; rows written."""
    rows = similarity_rows(stage, lam=lam, max_items=max_items, top_n=top_n)
    version = f"ease-{stage.name}-{lam:g}-{max_items}-{top_n}"
    return asyncio.run(_write(settings, rows, version))
