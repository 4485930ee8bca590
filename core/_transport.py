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

Here a connection failure (refused, reset, closed mid-request, timed out) always marks the
node dead, and one that is not a timeout — it costs no waiting — is retried on the next live
node, up to once per other node, whatever ``max_retries`` says. ``max_retries``,
``retry_on_timeout`` and ``retry_on_status`` keep their meaning for everything else. With a
single node nothing changes.

Retrying after a connection was closed mid-request can apply a write twice; that is
opensearch-py's default behaviour too (``max_retries=3``). Our writes are idempotent
(externally versioned documents, upserts by id) except exposure counters, which may then
count one impression twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping
from typing import Any

from opensearchpy import AsyncTransport
from opensearchpy.exceptions import ConnectionError, ConnectionTimeout, TransportError

__all__ = ["FailoverTransport"]


class FailoverTransport(AsyncTransport):
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
            try:
                status, raw_headers, data = await connection.perform_request(
                    method, url, params, body, headers=headers, ignore=ignore, timeout=timeout
                )
            except TransportError as exc:
                if method == "HEAD" and exc.status_code == 404:
                    return False
                if isinstance(exc, ConnectionError):
                    self._mark_dead(connection)
                    timed_out = isinstance(exc, ConnectionTimeout)
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
            self.connection_pool.mark_live(connection)
            if method == "HEAD":
                return 200 <= status < 300
            if data:
                content_type = {k.lower(): v for k, v in raw_headers.items()}.get("content-type")
                data = self.deserializer.loads(data, content_type)
            return data
