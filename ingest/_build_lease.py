"""One rebuild per alias at a time: a lease in MongoDB (``reindex_leases``) held by a reindex.

Two rebuilds of one alias at once each swap the alias and then keep ``keep_versions`` old
indices: with ``keep_versions=0`` each deleted the other's index, the one the alias had just
been swapped to, and both exited 0 with the alias pointing at no index (found by running two
``opendisco reindex`` together). Their sync floors could also be saved out of order.

The lease is ``{_id: <alias>, owner, pid, host, started_at, expires}``, taken by a unique
``_id`` insert (atomic on FerretDB too) and renewed every third of :data:`LEASE` while the
rebuild runs. A second rebuild is refused at once (:class:`IndexStateError` naming the holder)
unless the holder is gone: its lease expired, or it was a process of this host that no longer
runs (``opendisco._holder``: a reindex killed with -9 is re-run at once, without waiting for
the expiry); of several rebuilds finding it so, one frees it (``opendisco._store.free_leases``).
Before
its alias swap a rebuild checks that it still holds the lease (:meth:`BuildLease.check`): one
whose renewals failed for longer than the lease stops there, the alias untouched.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError, PyMongoError

from opendisco._backend import backend_errors
from opendisco._exceptions import IndexStateError
from opendisco._holder import held_until_over, holder
from opendisco._store import free_leases, renewing

__all__ = ["LEASE", "REINDEX_LEASES", "BuildLease", "build_lease", "rebuild_running"]

log = logging.getLogger(__name__)

REINDEX_LEASES = "reindex_leases"
LEASE = timedelta(seconds=60)


class BuildLease:
    """The lease of one rebuild of ``alias`` (take it with :func:`build_lease`)."""

    def __init__(self, db: Any, alias: str) -> None:
        self.coll = db[REINDEX_LEASES]
        self.alias = alias
        self.token = uuid.uuid4().hex
        self._valid_until = 0.0  # monotonic: the last successful renewal plus the lease
        self._lost = False

    def _held(self, at: float) -> None:
        # the lease as the store sees it ends LEASE after the write landed; ``at`` is before
        # the write was sent, and the margin covers clocks that drift apart meanwhile
        self._valid_until = at + LEASE.total_seconds() - 5.0

    async def acquire(self) -> None:
        for _ in range(3):
            now = datetime.now(UTC)
            started = time.monotonic()
            doc = {
                "_id": self.alias,
                "owner": self.token,
                **holder(),
                "started_at": now,
                "expires": now + LEASE,
            }
            with backend_errors("taking the reindex lease failed"):
                try:
                    await self.coll.insert_one(doc)
                except DuplicateKeyError:
                    held = await self.coll.find_one({"_id": self.alias})
                else:
                    self._held(started)
                    return
                if held is None:
                    continue  # released meanwhile
                if held_until_over(held, now):
                    # one contender alone frees it (a plain delete of the dead owner's lease
                    # removed a contender's new one on FerretDB: two of two rebuilds started
                    # after a dead one in 28 of 100 rounds)
                    owner = {self.alias: str(held.get("owner"))}
                    await free_leases(self.coll, owner, now, self.token, LEASE.total_seconds())
                    continue
            raise IndexStateError(
                f"another reindex of {self.alias} is running (pid {held.get('pid')} on"
                f" {str(held.get('host')).split('|')[0]}, since {held.get('started_at')});"
                " not started"
            )
        raise IndexStateError(f"reindex of {self.alias}: its lease changed hands; not started")

    async def renew(self) -> None:
        started = time.monotonic()
        with backend_errors("renewing the reindex lease failed"):
            res = await self.coll.update_one(
                {"_id": self.alias, "owner": self.token},
                {"$set": {"expires": datetime.now(UTC) + LEASE}},
            )
        if res.matched_count:
            self._held(started)
        else:
            self._lost = True

    def check(self) -> None:
        """Raise unless this rebuild still holds its lease (called before the alias swap)."""
        if self._lost or time.monotonic() >= self._valid_until:
            raise IndexStateError(
                f"reindex of {self.alias} lost its lease (renewals failed or another run"
                " took it); alias left unchanged"
            )

    async def release(self) -> None:
        with contextlib.suppress(PyMongoError):
            await self.coll.delete_one({"_id": self.alias, "owner": self.token})


@contextlib.asynccontextmanager
async def build_lease(db: Any, alias: str) -> AsyncIterator[BuildLease]:
    """Hold the rebuild lease of ``alias`` (renewed in the background) while the block runs."""
    lease = BuildLease(db, alias)
    await lease.acquire()
    try:
        async with renewing(
            lease.renew,
            LEASE.total_seconds() / 3,
            lambda exc: log.warning("reindex of %s: lease renewal failed: %s", alias, exc),
        ):
            yield lease
    finally:
        await lease.release()


async def rebuild_running(db: Any, alias: str) -> bool:
    """Whether a rebuild of ``alias`` holds its lease now (its ``building`` index is not a
    partial one left by a run that died)."""
    with backend_errors("reading the reindex lease failed"):
        held = await db[REINDEX_LEASES].find_one({"_id": alias})
    return held is not None and not held_until_over(held, datetime.now(UTC))
