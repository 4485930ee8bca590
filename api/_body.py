"""JSON request bodies read strictly: an object that names a key twice, or has more than
:data:`MAX_OBJECT_KEYS` keys, is refused (422).

Python's JSON reader keeps the last of a repeated key, so ``{"events": [A], "events": [B]}``
recorded B and answered 200 while A was lost without a word, and an event naming ``type``
twice was recorded as whichever came last, where another reader on the way (a proxy, a log)
may take the first. RFC 8259 leaves such a body's meaning to each reader: the API refuses it.
Every router's routes are :class:`StrictJSONRoute`; FastAPI turns the decode error into its
``json_invalid`` validation error (422), the message naming the key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

__all__ = ["MAX_OBJECT_KEYS", "StrictJSONRequest", "StrictJSONRoute", "loads_unique"]


#: the most keys a JSON object of a request body may have (the shipped templates: 30 at most;
#: an event: 10). Each unknown key of an event is a validation error of its own: one event with
#: a million keys was a million errors worked out on the event loop, and as many in the 422
MAX_OBJECT_KEYS = 1000


class _Refused(ValueError):
    """An object the API does not read (the message says why)."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_OBJECT_KEYS:
        raise _Refused(f"an object with more than {MAX_OBJECT_KEYS} keys")
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {key!r}")
            seen.add(key)
    return out


def loads_unique(body: bytes | str) -> Any:
    """``json.loads`` that raises :class:`json.JSONDecodeError` on an object with a repeated
    key (the message names it) or more than :data:`MAX_OBJECT_KEYS` keys."""
    try:
        return json.loads(body, object_pairs_hook=_unique)
    except _Refused as exc:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        raise json.JSONDecodeError(str(exc), text, 0) from None


class StrictJSONRequest(Request):
    """A request whose JSON body is read with :func:`loads_unique`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_unique(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose handler reads the body as a :class:`StrictJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
