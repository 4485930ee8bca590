"""The continuous sync loop: passes until stopped, periodic reconciliation, backoff.

``run_sync`` repeats :class:`~._sync.Syncer` passes until stopped, reconciles its partitions
every ``sync_reconcile_interval`` seconds (``_reconcile``), and never exits on a backend
error: it backs off (capped at ``sync_backoff_max``), logs the health of both backends, keeps
the checkpoint, and retries. It exits only on configuration errors (``ConfigError``, and
``IndexStateError``: the alias is missing at its start, or for ``ALIAS_GONE_S`` once a bulk
found no index behind it — a node behind on the cluster state says so for a while —, or
change-stream history was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from opendisco._cancel import stop_tasks
from opendisco._exceptions import BackendError, IndexMissing, IndexStateError, SyncGap
from opendisco._settings import Settings

from ._reconcile import ReconcileReport
from ._sync import LeaseLost, Syncer, SyncReport

__all__ = ["ALIAS_GONE_S", "STOP_GRACE_S", "backoff", "run_sync"]

log = logging.getLogger("opendisco.ingest.sync")


def backoff(failures: int, cap: float, base: float = 0.5) -> float:
    """Capped exponential backoff with jitter (half fixed, half random)."""
    delay = min(cap, base * 2 ** max(0, failures - 1))
    return delay / 2 + random.uniform(0, delay / 2)


#: how long the pass in flight may go on once the worker is told to stop (SIGTERM, SIGINT)
#: before it is cancelled: a pass is crash-safe (checkpoints move only after the engine
#: acknowledged), and one a paused store or engine held up kept the worker for ~40 s (past
#: compose's 10 s stop grace, measured), a second signal changing nothing
STOP_GRACE_S = 3.0

#: how long an alias the worker wrote through may read missing before the worker takes it
#: for gone: a node behind on the cluster state answers so until it catches up (a paused
#: node is dropped within ~10–40 s and rejoins with the current state)
ALIAS_GONE_S = 60.0


async def run_sync(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_report: Callable[[SyncReport], None] | None = None,
    on_reconcile: Callable[[ReconcileReport], None] | None = None,
) -> None:
    """Sync until ``stop`` is set, polling every ``sync_poll_interval`` seconds when idle.
    Once it is set, the pass in flight has :data:`STOP_GRACE_S` to finish, then is cancelled;
    the worker's leases are then released (:meth:`Syncer.close`, bounded)."""
    stop = stop or asyncio.Event()
    syncer = Syncer(settings)
    log.info("worker %s: syncing into %s", syncer.worker, settings.index_alias)
    work = asyncio.ensure_future(_passes(syncer, settings, stop, on_report, on_reconcile))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            await asyncio.wait({work}, timeout=STOP_GRACE_S)
        if work.done():
            work.result()  # a configuration error ends the worker
    finally:
        if await stop_tasks([work, stopped]):
            log.warning("worker %s: the pass in flight did not stop", syncer.worker)
        await syncer.close()


async def _passes(
    syncer: Syncer,
    settings: Settings,
    stop: asyncio.Event,
    on_report: Callable[[SyncReport], None] | None,
    on_reconcile: Callable[[ReconcileReport], None] | None,
) -> None:
    """:func:`run_sync`'s passes, reconciliations and backoff until ``stop`` is set. The
    first reconciliation follows the first pass: what no pass sees (hard deletes, backdated
    writes) made while no worker ran leaves the index at a worker's start (it came
    ``sync_reconcile_interval`` after it, so a worker restarted more often than that never
    took a member hard-deleted meanwhile out of the engine)."""
    interval = settings.sync_reconcile_interval
    next_reconcile = time.monotonic() if interval > 0 else float("inf")
    failures, failing_since = 0, 0.0
    missing_since: float | None = None  # since a bulk found no index behind the alias
    while not stop.is_set():
        try:
            if not syncer.checked:
                await syncer.check()
                missing_since = None
            report = await syncer.once()
            if time.monotonic() >= next_reconcile:
                rec = await syncer.reconcile()
                next_reconcile = time.monotonic() + interval
                if on_reconcile is not None:
                    on_reconcile(rec)
        except LeaseLost as exc:
            log.warning("%s; coordinating again", exc)
            await syncer.reset()
            continue
        except (BackendError, IndexStateError) as exc:
            if isinstance(exc, IndexStateError):
                # a bulk found no index behind the alias past its retries (IndexMissing), or
                # the check after it read no alias: a node behind on the cluster state says
                # so until it catches up, so only an alias missing for ALIAS_GONE_S is gone
                # (a configuration error: the worker exits); history lost always is one
                seen = missing_since is not None or isinstance(exc, IndexMissing)
                if isinstance(exc, SyncGap) or not seen:
                    raise
                missing_since = missing_since or time.monotonic()
                if time.monotonic() - missing_since > ALIAS_GONE_S:
                    raise
                syncer.checked = False
            failures += 1
            failing_since = failing_since or time.monotonic()
            delay = backoff(failures, settings.sync_backoff_max)
            log.warning(
                "backend error (%s); attempt %d, retrying in %.1fs, checkpoint kept; %s",
                exc,
                failures,
                delay,
                await syncer.health(),
            )
            await syncer.reset()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            continue
        if failures:
            log.warning(
                "backends reachable again after %d failed attempts (%.0fs)",
                failures,
                time.monotonic() - failing_since,
            )
            failures, failing_since = 0, 0.0
        if on_report is not None and report.changes:
            on_report(report)
        if report.changes:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.sync_poll_interval)
