"""The versioned indices behind the read alias: names, build state, atomic swap, retention.

Every build is a new ``<alias>-v<UTC timestamp>`` index whose ``_meta.opendisco`` records its
state (``building`` → ``complete``) and its builder (pid, host, start), so a later run can tell
a build in progress from one left by a crashed process.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from opensearchpy.exceptions import NotFoundError, RequestError

from opendisco._exceptions import IndexStateError
from opendisco._holder import process_alive

__all__ = [
    "STALE_BUILD",
    "alias_targets",
    "beyond_retention",
    "builder_gone",
    "cleanup_partial",
    "create_build",
    "new_index_name",
    "retain",
    "swap_alias",
    "versioned_indices",
]

STALE_BUILD = timedelta(hours=6)


def new_index_name(alias: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{alias}-v{now:%Y%m%d%H%M%S%f}"


async def versioned_indices(client: Any, alias: str) -> dict[str, dict[str, Any]]:
    """``{index: _meta.opendisco}`` of every ``<alias>-v<digits>`` index (what
    ``new_index_name`` names). The wildcard ``<alias>-v*`` also matches the builds of another
    alias named like ``<alias>-v…`` (``items-vip``, ``items-v2``): a retention or a cleanup
    of ``alias`` deleted them, and that alias with them."""
    try:
        resp = await client.indices.get_mapping(index=f"{alias}-v*", expand_wildcards="all")
    except NotFoundError:
        return {}
    ours = re.compile(re.escape(alias) + r"-v[0-9]+")
    out = {}
    for name, body in resp.items():
        if not ours.fullmatch(name):
            continue
        meta = (body.get("mappings") or {}).get("_meta") or {}
        out[name] = meta.get("opendisco") or {}
    return out


async def create_build(client: Any, index: str, body: dict[str, Any]) -> None:
    """Create the new build index ``index`` (its ``_meta.opendisco`` names this build).

    A create whose connection was cut after the engine applied it is sent again by the
    client's transport and answered ``resource_already_exists_exception``: the index whose
    ``_meta.opendisco`` is this build's (its start time to the microsecond) is that create,
    not another build's — before, the rebuild failed there."""
    try:
        await client.indices.create(index=index, body=body)
    except RequestError as exc:
        if exc.error != "resource_already_exists_exception":
            raise
        resp = await client.indices.get_mapping(index=index)
        meta = ((resp.get(index) or {}).get("mappings") or {}).get("_meta") or {}
        if meta.get("opendisco") != body["mappings"]["_meta"]["opendisco"]:
            raise IndexStateError(f"{index} exists already, created by another build") from exc


async def alias_targets(client: Any, alias: str) -> list[str]:
    try:
        resp = await client.indices.get_alias(name=alias)
    except NotFoundError:
        return []
    return sorted(resp)


def builder_gone(meta: dict[str, Any]) -> bool:
    started = meta.get("started_at")
    if started:
        age = datetime.now(UTC) - datetime.fromisoformat(started)
        if age > STALE_BUILD:
            return True
    if meta.get("host") != socket.gethostname():
        return False
    pid = meta.get("pid")
    # our own earlier, failed attempt (the rebuild lease keeps two of one alias from running)
    return not process_alive(pid) or pid == os.getpid()


async def cleanup_partial(client: Any, alias: str, *, leased: bool = False) -> list[str]:
    """Delete indices whose build never finished (never the alias target).

    ``leased``: the caller holds the alias's rebuild lease (``_build_lease``), so no build
    of it is running: every ``building`` index is left by a run that died or lost the lease
    (which can no longer swap it in). Without the lease only the builds of processes known
    to be gone go: of this host, or older than ``STALE_BUILD`` — a build killed in another
    container, or whose pid a new process got since, stayed that long."""
    targets = set(await alias_targets(client, alias))
    removed = []
    for name, meta in (await versioned_indices(client, alias)).items():
        if name in targets or meta.get("state") != "building":
            continue
        if leased or builder_gone(meta):
            await client.indices.delete(index=name, ignore_unavailable=True)
            removed.append(name)
    return removed


async def swap_alias(client: Any, alias: str, index: str) -> list[str]:
    """Point ``alias`` at ``index`` only, in one atomic ``_aliases`` call; return the old ones."""
    if await client.indices.exists(index=alias) and not await client.indices.exists_alias(
        name=alias
    ):
        raise IndexStateError(f"{alias} is a concrete index, not an alias; delete it first")
    old = [t for t in await alias_targets(client, alias) if t != index]
    actions: list[dict[str, Any]] = [{"remove": {"index": t, "alias": alias}} for t in old]
    actions.append({"add": {"index": index, "alias": alias}})
    await client.indices.update_aliases(body={"actions": actions})
    return old


async def retain(
    client: Any, alias: str, current: str, keep: int, served: Iterable[str] = ()
) -> list[str]:
    """Delete the complete indices of ``alias`` beyond the newest ``keep`` rollback targets,
    and those never served (:func:`beyond_retention`); never ``current`` nor an index the
    alias points at. ``served``: the indices the alias pointed at before ``current`` was
    swapped in (what the swap returned)."""
    indices = await versioned_indices(client, alias)
    serving = {current, *await alias_targets(client, alias)}
    complete = [n for n, m in indices.items() if n not in serving and m.get("state") == "complete"]
    removed = beyond_retention(complete, [s for s in served if s in indices], keep)
    for name in removed:
        await client.indices.delete(index=name, ignore_unavailable=True)
    return removed


def beyond_retention(complete: Iterable[str], served: Iterable[str], keep: int) -> list[str]:
    """The ``complete`` indices of one alias retention deletes (pure): those built after the
    newest of ``served`` (the indices the alias pointed at until now) that are not one of
    them — never swapped in: a rebuild killed between marking its index complete and its
    swap left it — and the rollback targets beyond the newest ``keep``, the rollback
    targets being the others (rebuilds of an alias run one at a time, under its lease, and
    each swaps in the newest index: an index named before a served one was served in its
    turn). Counted among the ``keep``, such an orphan had the oldest index the alias served
    deleted instead, one rollback target fewer than promised. Without ``served`` (nothing
    was swapped out) every complete index is a rollback target."""
    swapped_out = set(served)
    newest = max(swapped_out, default=None)
    names = sorted(complete, reverse=True)  # newest first: names end in their UTC build time
    orphans = [n for n in names if newest is not None and n > newest and n not in swapped_out]
    targets = [n for n in names if n not in orphans]
    return [*orphans, *targets[keep:]]
