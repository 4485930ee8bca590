"""Typed dependencies of the routes: the runtime, the scoped API key, and the parameters.

The order FastAPI resolves them in is the order of the checks: the key (401/403) and its
token bucket (429) before parameter validation (422), so a flood of invalid requests from
one key is still rate limited.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from pydantic import BeforeValidator

from opendisco._domain import ID_MAX_LENGTH, ID_PATTERN, UserSurface
from opendisco._exceptions import Overloaded, RateLimited

from ._cursor import MAX_CURSOR_CHARS
from ._keys import ApiKey, ApiKeyStore
from ._runtime import Runtime

__all__ = [
    "CursorQ",
    "Explain",
    "ItemPath",
    "K",
    "QueryQ",
    "ReadKey",
    "RuntimeDep",
    "SurfaceQ",
    "UserPath",
    "UserQ",
    "WriteKey",
    "given_once",
    "require_explain",
    "runtime",
    "scoped",
]

#: the most repeated parameters a 422 names (the first, by name)
MAX_REPEATED_LISTED = 20

_ANONYMOUS = ApiKey("anonymous", "auth disabled", frozenset({"read", "write", "admin"}))
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (odk_...).")


def runtime(request: Request) -> Runtime:
    """The app's runtime; 503 while the lifespan has not built it (or has torn it down)."""
    rt: Runtime | None = request.app.state.runtime
    if rt is None:
        raise Overloaded("starting up", 1.0)
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def scoped(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    """Dependency: the request's API key (401/403) after its token bucket (429)."""

    async def dependency(
        request: Request, token: Annotated[str | None, Security(_key_header)] = None
    ) -> ApiKey:
        rt = runtime(request)
        if not rt.settings.api_auth:
            key = _ANONYMOUS
        else:
            if token is None:
                auth = request.headers.get("authorization", "")
                if auth[:7].lower() == "bearer ":
                    token = auth[7:].strip()
            key = await rt.keys.authenticate(token)
            rt.keys.require(key, scope)
        rt.shares.note(key.key_id)
        wait = rt.rate.take(key.key_id, key.rate_limit, share=rt.shares.share(key.key_id))
        if wait > 0:
            rt.metrics.rejected.labels("rate_limited").inc()
            raise RateLimited(f"rate limit of key {key.key_id} exceeded", wait)
        given_once(request)
        return key

    return dependency


def given_once(request: Request) -> None:
    """422 for a query parameter given more than once (``?k=1&k=100``): the API read the last
    and answered, where a proxy, a cache key or a log may read the first (the same reason a
    JSON key named twice is refused, ``_body``). Every parameter of the API takes one value;
    one that takes a list would be exempted here. Checked after the key and its bucket, like
    every parameter."""
    given = Counter(name for name, _ in request.query_params.multi_items())
    repeated = sorted(name for name, n in given.items() if n > 1)
    if repeated:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"given {given[name]} times: each parameter is given once",
                    "type": "repeated",
                }
                for name in repeated[:MAX_REPEATED_LISTED]
            ]
        )


def require_explain(key: ApiKey, explain: bool) -> None:
    """``explain=true`` shows the rendered queries and scores: admin keys only (403)."""
    if explain:
        ApiKeyStore.require(key, "admin")


def _path_id(description: str) -> Any:
    return Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description=description)


ReadKey = Annotated[ApiKey, Depends(scoped("read"))]
WriteKey = Annotated[ApiKey, Depends(scoped("write"))]


def _plain_digits(value: Any) -> Any:
    """A count written as plain digits: ``int()`` would also take ``5_0``, ``+5`` and `` 5``."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) <= 6):
        raise ValueError("must be a whole number written in digits")
    return value


#: the validator after ``Query``: before it, the published schema said ``ge``/``le`` where
#: OpenAPI says ``minimum``/``maximum`` (clients and schemathesis saw no bound)
K = Annotated[
    int,
    Query(ge=1, le=100, description="Number of items (1..100)."),
    BeforeValidator(_plain_digits),
]
Explain = Annotated[bool, Query(description="Sources, per-step scores, rendered query (admin).")]
UserQ = Annotated[
    str | None,
    Query(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description="Viewer id."),
]
UserPath = Annotated[str, _path_id("User id.")]
ItemPath = Annotated[str, _path_id("Item id.")]
SurfaceQ = Annotated[UserSurface, Query(description="Surface.")]
CursorQ = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_CHARS,
        pattern=r"^[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+$",
        description="next_cursor of the previous page (opaque, signed).",
    ),
]
#: a query text: not blank, and no control character but tab, newline and carriage return (a
#: NUL or an escape went to the engine and into the served-list log: 200)
_TEXT = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
QUERY_PATTERN = rf"^{_TEXT}*[^\s\x00-\x1f\x7f]{_TEXT}*$"
QueryQ = Annotated[
    str,
    Query(
        min_length=1,
        max_length=1000,
        pattern=QUERY_PATTERN,
        description="Query text (not blank, no control characters).",
    ),
]
