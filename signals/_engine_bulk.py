"""One ``_bulk`` of scripted counter upserts, its rejected items sent again (opensearch-py's
``streaming_bulk`` rule: 429s are retried; here also a lagging node's index_not_found).

The engine's counters (exposure, live trend) add on every application, so a ``_bulk`` answer is
read item by item: an item applied must never be sent again and one not applied must not be
counted as written. An overloaded engine rejects single items of a bulk it otherwise applies
(``429 es_rejected_execution_exception``: a shard's write queue full), and a node behind on the
cluster state answers ``index_not_found_exception`` for the counters' index, just created or
not (as the ingest's bulks do: ``BulkWriter``);
:func:`bulk_updates` sends those again, alone, up to ``retries`` times with a doubling pause,
and returns what was applied and what still was not, by document id. A retry round that fails
as a whole (the engine stopped answering) ends the retries: its items are returned as not
applied. A first request that fails as a whole raises (:class:`~opendisco.PartialWrite` naming
every item when the engine refused it: answered 429 to its only send, nothing was applied). A
request that failed without an answer (timed out, connection cut, or sent again by the
transport after such a failure) may have been applied all the same, and a retry round's items
are then returned as not applied and unsure: the writers mark their counter writes and a
counter ignores a mark it keeps (``_counting.once_per_mark``), so the transport's re-sends and
a served flush's retry of the same part count once, and an event batch's call reads its marks
back before its events are taken over (``_apply``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from opensearchpy import AsyncOpenSearch

from opendisco._backend import backend_errors, item_index_missing
from opendisco._exceptions import BackendError, PartialWrite
from opendisco._transport import counting_sends

__all__ = ["BulkOutcome", "Pair", "bulk_updates"]

#: ``(action line, source line)`` of one item: ``({"update": {"_id": ...}}, {"script": ...})``
Pair = tuple[dict[str, Any], dict[str, Any]]
#: the applied items' results, ``{id: error}`` of the others, the ids of those among them the
#: engine may still apply (their request failed without an answer)
BulkOutcome = tuple[list[dict[str, Any]], dict[str, str], frozenset[str]]


def _split(
    pairs: Sequence[Pair], items: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple[Pair, str, bool]]]:
    """The results of the applied items, and ``(pair, error, retryable)`` of the others."""
    applied: list[dict[str, Any]] = []
    failed: list[tuple[Pair, str, bool]] = []
    for pair, item in zip(pairs, items, strict=False):
        res = next(iter(item.values()), {}) if item else {}
        if "error" not in res and 200 <= int(res.get("status", 200)) < 300:
            applied.append(res)
        else:
            # an item answered index_not_found: the counters' index is ensured before any
            # write, so a node behind on the cluster state answered it (one resumed after a
            # pause, or that has not applied the creation yet): nothing applied, sent again
            # like a rejected item (the next send goes to another node)
            again = int(res.get("status", 0)) == 429 or item_index_missing(res)
            failed.append((pair, str(res.get("error")), again))
    for pair in pairs[len(items) :]:  # an answer shorter than the request: not known applied
        failed.append((pair, "no result in the bulk answer", False))
    return applied, failed


def _id(pair: Pair) -> str:
    return str(next(iter(pair[0].values()))["_id"])


async def _send(client: AsyncOpenSearch, pairs: Sequence[Pair], what: str) -> dict[str, Any]:
    """One ``_bulk`` of ``pairs``; refused (429 to its only send: nothing applied) raises
    :class:`~opendisco.PartialWrite` naming them all, any other failure as it came."""
    with counting_sends() as sends:
        try:
            with backend_errors(what):
                return await client.bulk(body=[line for pair in pairs for line in pair])
        except BackendError as exc:
            if sends.count == 1 and getattr(exc.__cause__, "status_code", None) == 429:
                ids = frozenset(_id(pair) for pair in pairs)
                raise PartialWrite(f"{what}: refused, nothing applied: {exc}", ids) from exc
            raise


async def bulk_updates(
    client: AsyncOpenSearch,
    pairs: Sequence[Pair],
    what: str,
    *,
    retries: int = 2,
    pause_s: float = 0.05,
) -> BulkOutcome:
    """Send ``pairs`` in one ``_bulk``; returns the applied items' results, ``{id: error}``
    of the items not applied and which of those may be applied still (see the module
    docstring)."""
    if not pairs:
        return [], {}, frozenset()
    resp = await _send(client, pairs, what)
    applied, failed = _split(pairs, resp.get("items", []))
    unsure: frozenset[str] = frozenset()
    for attempt in range(retries):
        again = [pair for pair, _err, retryable in failed if retryable]
        if not again:
            break
        await asyncio.sleep(pause_s * 2**attempt)
        try:
            resp = await _send(client, again, what)
        except PartialWrite:
            break  # refused: what was retried stays not applied
        except BackendError:
            unsure = frozenset(_id(pair) for pair in again)  # it may land still
            break  # the engine stopped answering: what was retried stays not applied
        more, still = _split(again, resp.get("items", []))
        applied += more
        failed = [f for f in failed if not f[2]] + still
    return applied, {_id(pair): err for pair, err, _retryable in failed}, unsure
