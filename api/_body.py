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

import email.message
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import Headers

from opendisco._exceptions import UnsupportedMedia

__all__ = [
    "MAX_OBJECT_KEYS",
    "StrictJSONRequest",
    "StrictJSONRoute",
    "check_media",
    "loads_unique",
]


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
    """A request whose JSON body is read with :func:`loads_unique`; a body JSON's reader
    cannot take (nested past the interpreter's recursion limit, an integer of more than 4300
    digits, not text) is a 400 that says so (FastAPI's: "There was an error parsing the
    body")."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads_unique(await self.body())
            except json.JSONDecodeError:
                raise
            except RecursionError:
                raise HTTPException(400, "request body not read: JSON nested too deep") from None
            except ValueError as exc:  # not UTF-8/16/32; an integer too long to convert
                raise HTTPException(400, f"request body not read: {exc}") from None
        return self._json


def _json_type(content_type: str) -> bool:
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def check_media(headers: Headers) -> None:
    """:class:`UnsupportedMedia` (415) unless a body is JSON (``Content-Type:
    application/json`` or ``+json``) sent as it is (no ``Content-Encoding`` but
    ``identity``): without a type FastAPI handed the body's bytes on and the client was told
    "Input should be a valid dictionary"; a gzip body was "There was an error parsing the
    body". Nothing is ever decompressed (no bomb to defuse)."""
    coding = headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedMedia(f"content coding {coding!r} is not accepted: send the body as is")
    content_type = headers.get("content-type", "")
    if not _json_type(content_type):
        got = repr(content_type) if content_type else "none"
        raise UnsupportedMedia(f"the body must be JSON (Content-Type: application/json; got {got})")


class StrictJSONRoute(APIRoute):
    """A route whose handler reads the body as a :class:`StrictJSONRequest`, after
    :func:`check_media` when the route takes a body and the request has one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def strict(request: Request) -> Response:
            strict_request = StrictJSONRequest(request.scope, request.receive)
            if takes_body and await strict_request.body():
                check_media(strict_request.headers)
            return await handler(strict_request)

        return strict
