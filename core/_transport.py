"""The async OpenSearch transport clients use: fail over to another node on connection loss.

opensearch-py's :class:`~opensearchpy.AsyncTransport` already round-robins over the nodes it
is given and keeps failed ones out of rotation for a while (``dead_timeout``, doubled per
consecutive failure), but two of its rules make a node loss cost answers:

* a connection failure is retried on another node only within ``max_retries``; the API sets
  ``max_retries=0`` (a retried *timeout* would blow its deadline), so every request that
  was on the killed node's sockets, and the first request after each ``dead_timeout``,
  failed instead of going to a live node;
* a node is marked dead only when the request is going to be retried, so with
  ``retry_on_timeout=False`` a node that stops answering (power loss, network partition:
  connects and reads time out) is never taken out of rotation and each request routed to
  it waits the full timeout.

Here a connection failure (refused, reset, closed mid-request) always marks the node dead,
and so does a timeout on a node that answered nothing else meanwhile (a live node whose
call waited on a hung node's shard copy inside the cluster keeps answering other calls: it
stays; before this rule such timeouts emptied the rotation and the pool's forced
resurrection could pick the hung node). A failure that is not a timeout — it costs no
waiting — is retried on the next live node, up to once per other node, whatever
``max_retries`` says. ``max_retries``,
``retry_on_timeout`` and ``retry_on_status`` keep their meaning for everything else. With a
single node nothing changes.

A caller with a deadline shorter than the client's timeout (the API: ``asyncio.wait_for``
cancels the call) never sees a timeout, so the rule above never fires for it: with a node
hung (SIGSTOP, a partition) every call routed there was cut by the deadline and the node
stayed in rotation — after the cluster had dropped the node, 0% of the API's answers came
from the pipeline for the whole hang (bench/ha). Given ``hung_after`` (seconds), a call
cancelled after waiting at least that long on a node that answered nothing meanwhile, while
another node did answer within twice that wait, marks the node dead too. The second
condition keeps a whole-cluster stall (every node silent: overload, a long GC) from
emptying the rotation; a slow node that answers something is not hung either.

Retrying after a connection was closed mid-request can apply a write twice; that is
opensearch-py's default behaviour too (``max_retries=3``). Our writes are idempotent
(externally versioned documents, upserts by id; the exposure and live-trend counters ignore a
write whose mark they keep: ``signals._counting.once_per_mark``). A caller that must tell a
version conflict caused by its own earlier attempt from one caused by another writer (a bulk
of externally versioned documents answered 409 for what the lost attempt applied) counts the
sends of its call with :func:`counting_sends`: the resend is otherwise invisible to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opensearchpy import AsyncTransport
from opensearchpy.exceptions import ConnectionError, ConnectionTimeout, TransportError

__all__ = ["FailoverTransport", "Sends", "counting_sends"]


@dataclass
class Sends:
    """How many times the transport sent the requests of a :func:`counting_sends` block."""

    count: int = 0


_SENDS: ContextVar[Sends | None] = ContextVar("opendisco_transport_sends", default=None)


@contextlib.contextmanager
def counting_sends() -> Iterator[Sends]:
    """Count the sends of the requests made in the block (in this task): more sends than
    requests means the transport sent one again after a failure that may have come after
    the node applied it (a connection cut mid-request, a 502/503/504 of a proxy)."""
    sends = Sends()
    token = _SENDS.set(sends)
    try:
        yield sends
    finally:
        _SENDS.reset(token)


class FailoverTransport(AsyncTransport):
    def __init__(self, *args: Any, hung_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hung_after = hung_after
        self._answered: dict[Any, float] = {}  # connection -> when it last answered (monotonic)

    def _all(self) -> list[Any]:
        pool = self.connection_pool
        return list(getattr(pool, "orig_connections", None) or pool.connections)

    def _nodes(self) -> int:
        return len(self._all())

    async def close(self) -> None:
        """Close every node's session; opensearch-py closes only the live ones and leaks the
        sessions of nodes that are out of rotation at the time."""
        await super().close()
        if self._async_init_called:
            for connection in self._all():
                await connection.close()  # idempotent

    def _mark_dead(self, connection: Any) -> None:
        with contextlib.suppress(TransportError):  # a sniff on failure may fail too
            self.mark_dead(connection)

    def _silent(self, connection: Any, since: float) -> bool:
        """Has the node answered nothing since ``since``?"""
        return self._answered.get(connection, since) <= since

    def _cut(self, connection: Any, started: float) -> None:
        """A call on ``connection`` was cancelled: take the node out of rotation if it looks
        hung (silent for the whole wait, at least ``hung_after``, while another answered)."""
        if self.hung_after is None or self._nodes() < 2:
            return
        now = time.monotonic()
        waited = now - started
        if waited < self.hung_after or not self._silent(connection, started):
            return
        if any(at >= now - 2 * waited for c, at in self._answered.items() if c is not connection):
            self._mark_dead(connection)

    async def perform_request(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
        ignore: Collection[int] = (),
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        await self._async_call()
        method, params, body, ignore, timeout = self._resolve_request_args(
            method, params, body, ignore, timeout
        )
        retries = failovers = 0
        while True:
            connection = self.get_connection()
            started = time.monotonic()
            if (sends := _SENDS.get()) is not None:
                sends.count += 1
            try:
                status, raw_headers, data = await connection.perform_request(
                    method, url, params, body, headers=headers, ignore=ignore, timeout=timeout
                )
            except asyncio.CancelledError:
                self._cut(connection, started)
                raise
            except TransportError as exc:
                if not isinstance(exc, ConnectionError):  # an answer, if an error
                    self._answered[connection] = time.monotonic()
                if method == "HEAD" and exc.status_code == 404:
                    return False
                if isinstance(exc, ConnectionError):
                    timed_out = isinstance(exc, ConnectionTimeout)
                    if not timed_out or self._silent(connection, started):
                        self._mark_dead(connection)
                    if not timed_out and failovers < self._nodes() - 1:
                        failovers += 1
                        continue
                    retry = self.retry_on_timeout if timed_out else True
                else:
                    retry = exc.status_code in self.retry_on_status
                    if retry:
                        self._mark_dead(connection)
                if not retry or retries >= self.max_retries:
                    raise
                retries += 1
                continue
            self._answered[connection] = time.monotonic()
            self.connection_pool.mark_live(connection)
            if method == "HEAD":
                return 200 <= status < 300
            if data:
                content_type = {k.lower(): v for k, v in raw_headers.items()}.get("content-type")
                data = self.deserializer.loads(data, content_type)
            return data
