"""The HTTP/1.1 connection as ``opendisco serve`` runs it: uvicorn's httptools protocol, its
request heads bounded (uvicorn bounds them only with h11; httptools reads any head).

Measured on uvicorn's own protocol: a 50 MB header field was read in full and answered 200
(the process grew by the head's size: a few such clients at once exhaust its memory), 200,000
header fields too, and a head sent a field at a time, or never finished, held its connection
for as long as the client liked (60 s and counting: no timeout applies before a head is
complete, nor to a connection that sends nothing). Here:

* a head (request line and fields) over :attr:`BoundedHttpTools.max_head_bytes`, or with more
  than :attr:`BoundedHttpTools.max_headers` fields, is answered 431 and the connection closed
  (what the client still sends is discarded for :data:`LINGER_S`, never kept);
* a head not complete :attr:`BoundedHttpTools.head_timeout_s` after its connection opened or
  its first byte arrived (a connection kept alive after an answer: uvicorn's own keep-alive
  timeout) has its connection closed;
* a warning of the connection's (uvicorn's ``Invalid HTTP request received.``, ``Unsupported
  upgrade request.``, a head refused): the client's to cause, one or two a request, at its
  rate (200 bytes of log a request: 17 GB a day at 1,000 a second), is logged once per
  :data:`QUIET_S`, the next one telling how many were left out (:class:`_Quiet`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import Counter
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from opendisco._exceptions import HeadTooLarge

from ._app import REQUESTS_GRACE_S
from ._errors import error_response

__all__ = ["BoundedHttpTools", "uvicorn_options"]


#: how long a refused head's connection is read (and what comes discarded) before its close
LINGER_S = 1.0


#: a connection's warning is logged once per this many seconds (per message)
QUIET_S = 60.0


class _Quiet:
    """A connection's logger (uvicorn's ``uvicorn.error``) whose warnings, caused by clients
    at their rate, are logged once per :data:`QUIET_S` each (by message, a fixed text: few),
    the next one telling how many were left out; the rest of the logger as it is."""

    _last: ClassVar[dict[str, float]] = {}
    _left_out: ClassVar[Counter[str]] = Counter()

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)

    def warning(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(msg, -math.inf) < QUIET_S:
            self._left_out[msg] += 1
            return
        self._last[msg] = now
        left_out = self._left_out.pop(msg, 0)
        more = f" ({left_out} more since the last logged)" if left_out else ""
        self._logger.warning(msg + more, *args)


class _Refused(Exception):
    """Raised in a parser callback: the head is refused (its reason kept by the protocol)."""


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with its request heads bounded in size, fields and time."""

    #: the most bytes of a request head (nginx: 4 x 8 KiB buffers; Node: 16 KiB)
    max_head_bytes = 64 * 1024
    #: the most header fields of a request (a proxy's own, tracing and the key: a few dozen)
    max_headers = 100
    #: from a connection's opening, or its next head's first byte, to that head's end
    head_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not isinstance(self.logger, _Quiet):
            self.logger = _Quiet(self.logger)  # type: ignore[assignment]
        super().connection_made(transport)
        self._in_head = True
        self._head_bytes = 0
        self._fields = 0
        self._refusal: HeadTooLarge | None = None
        self._discarding = False
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.head_timeout_s, self._head_late
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding or self.transport.is_closing():
            return
        if not self._in_head:
            super().data_received(data)
            return
        room = self.max_head_bytes - self._head_bytes
        self._head_bytes += min(len(data), room)
        super().data_received(data[:room])  # the rest only once the head is complete
        if self._in_head and self._head_bytes >= self.max_head_bytes:
            self._refuse(HeadTooLarge(f"request head larger than {self.max_head_bytes} bytes"))
        elif len(data) > room and not self.transport.is_closing():
            self.data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._fields = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_late)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self.max_headers:
            self._refusal = HeadTooLarge(f"more than {self.max_headers} header fields")
            raise _Refused  # the parser's error: uvicorn answers with send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what comes next on the connection is the next request's head
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(self._refusal)

    def _refuse(self, exc: HeadTooLarge) -> None:
        """The API's error answer for ``exc`` (``_errors.error_response``: its status, headers
        and body, as every error's), written raw, and the connection closed: the head was not
        read, so neither is anything after it."""
        self._stop_head_timer()
        resp = error_response(exc, uuid.uuid4().hex)
        head = [f"HTTP/1.1 {resp.status_code} {HTTPStatus(resp.status_code).phrase}".encode()]
        head += [k + b": " + v for k, v in resp.raw_headers] + [b"connection: close", b"", b""]
        self.logger.warning("request refused: %s", exc)
        self.transport.write(b"\r\n".join(head) + resp.body)
        # a lingering close: what the client still sends is discarded for a moment, so the
        # answer is not lost to a reset (a close with unread data resets the connection)
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.transport.close()  # like uvicorn's keep-alive timeout: closed, no answer

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


def uvicorn_options() -> dict[str, Any]:
    """What ``opendisco serve`` runs uvicorn with, past the address and the logging."""
    return {
        "http": BoundedHttpTools,
        # a stop does not wait longer for requests in flight (their backends may not answer):
        # the rest of its budget is the drain's (opendisco.api.STOP_S)
        "timeout_graceful_shutdown": REQUESTS_GRACE_S,
    }
