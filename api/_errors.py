"""Error responses: one JSON shape for every failure, and the app's exception handlers.

``{"request_id", "error": {"type", "message", "detail"}}`` with ``X-Request-ID`` (and
``Retry-After`` on every 429 and 503: the wait :class:`~opendisco.RateLimited` /
:class:`~opendisco.Overloaded` name, else :data:`BACKEND_RETRY_AFTER_S`); the
status comes from :func:`opendisco.http_status`, the one map of the error tree to HTTP.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from opendisco._exceptions import (
    BackendError,
    InvalidInput,
    OpenDiscoError,
    Overloaded,
    RateLimited,
    SearchBackendError,
    SearchTooLarge,
    StoreBackendError,
    TemplateParamError,
    http_status,
)

from ._models import ErrorResponse

__all__ = ["BODY_ERRORS", "ERRORS", "error_response", "install_error_handlers", "request_id"]

log = logging.getLogger("opendisco.api")

#: the error statuses of the /v1 routes, as published in the OpenAPI document
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": desc}
    for status, desc in (
        (400, "Malformed request: a body that cannot be decoded (not UTF-8, nested too deep)."),
        (401, "Missing, unknown or revoked API key."),
        (403, "The key lacks the scope (explain=true needs admin)."),
        (404, "Unknown id."),
        (422, "Invalid input."),
        (429, "Rate limited (see Retry-After)."),
        (503, "Saturated or no answer at all (see Retry-After)."),
    )
}


#: the statuses of a request body refused at the edge (routes that take a body)
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorResponse, "description": "The body did not arrive in time."},
    413: {"model": ErrorResponse, "description": "The body is over api_max_body_bytes."},
    415: {
        "model": ErrorResponse,
        "description": "The body is not sent as JSON (Content-Type: application/json), or is "
        "content-coded (Content-Encoding other than identity).",
    },
}


def request_id(request: Request) -> str:
    """The id the edge middleware gave this request."""
    return str(request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex)


def _body(rid: str, kind: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"request_id": rid, "error": {"type": kind, "message": message, "detail": detail}}


#: Retry-After of a 503 that names no wait of its own (a backend call failed): clients retry
#: soon, and the breaker and the degraded fallback decide what the retry gets
BACKEND_RETRY_AFTER_S = 1

#: the longest Retry-After told: a key with a tiny rate (one request a day) would otherwise be
#: told to wait its whole refill; a client that comes back sooner gets the rest of the wait
MAX_RETRY_AFTER_S = 3600


def _public_message(exc: OpenDiscoError, rid: str) -> str:
    """What a client is told: a backend failure names the backend, not its hosts, indices or
    driver text (those go to the log under the request id)."""
    if not isinstance(exc, BackendError):
        return str(exc)
    log.warning("request %s: %s: %s", rid, type(exc).__name__, exc)
    if isinstance(exc, SearchTooLarge):  # not "retry later": the same request is refused again
        why = f": {exc}" if isinstance(exc.__cause__, TemplateParamError) else ""
        return f"the query is too large for the search engine{why}"
    if isinstance(exc, SearchBackendError):
        return "the search engine did not answer; retry later"
    if isinstance(exc, StoreBackendError):
        return "the store did not answer; retry later"
    return "a backend did not answer; retry later"


def error_response(exc: OpenDiscoError, rid: str, detail: Any = None) -> JSONResponse:
    headers = {"X-Request-ID": rid}
    status = http_status(exc)
    if isinstance(exc, RateLimited | Overloaded):
        wait = min(float(MAX_RETRY_AFTER_S), exc.retry_after)
        headers["Retry-After"] = str(max(1, round(wait + 0.499)))
    elif status == 503:
        headers["Retry-After"] = str(BACKEND_RETRY_AFTER_S)
    return JSONResponse(
        _body(rid, type(exc).__name__, _public_message(exc, rid), detail),
        status_code=status,
        headers=headers,
    )


async def _opendisco_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenDiscoError)
    return error_response(exc, request_id(request))


def _msg(error: Any) -> str:
    """A validation error's message; a body that is not JSON also says why (the decoder's
    words: ``Expecting value``, ``duplicate key 'events'``)."""
    msg = str(error.get("msg"))
    why = (error.get("ctx") or {}).get("error") if error.get("type") == "json_invalid" else None
    return f"{msg}: {why}" if why else msg


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": _msg(e), "type": str(e.get("type"))}
        for e in exc.errors()
    ]
    return error_response(InvalidInput("request validation failed"), request_id(request), detail)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    rid = request_id(request)
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":  # routing's: no such path
        # the path as routed: an id's %2F is a slash there (another path; ids have none)
        message = f"no route for {request.method} {request.url.path[:200]}"
    if exc.status_code == 405:  # which method, and what to use
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method {request.method} not allowed here (allowed: {allowed})"
    return JSONResponse(
        _body(rid, "HTTPError", message),
        status_code=exc.status_code,
        headers={**(exc.headers or {}), "X-Request-ID": rid},  # e.g. a 405's Allow
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    rid = request_id(request)
    return JSONResponse(
        _body(rid, "InternalError", "internal error"),
        status_code=500,
        headers={"X-Request-ID": rid},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OpenDiscoError, _opendisco_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
