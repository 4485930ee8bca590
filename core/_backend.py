"""The one place where backend library errors become opendisco errors.

OpenSearch (opensearch-py) and MongoDB (pymongo) raise their own exception trees; every
I/O call of opendisco runs inside :func:`backend_errors`, which maps them through
:data:`BACKEND_EXC_MAP` (first match wins, most specific first) and re-raises
``mapped(f"{what}: {exc}") from exc`` — the pattern of httpx's ``map_httpcore_exceptions``.
Errors that carry meaning for the caller (a 404 that means "absent", a duplicate key that means
"already claimed") are caught *inside* the block, before they reach the map.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opensearchpy.exceptions import ConnectionTimeout, OpenSearchException
from opensearchpy.exceptions import NotFoundError as SearchNotFound
from pymongo.errors import AutoReconnect, PyMongoError, ServerSelectionTimeoutError

from ._exceptions import (
    BackendError,
    NotFound,
    SearchBackendError,
    SearchTimeout,
    StoreBackendError,
    StoreUnreachable,
)

__all__ = ["BACKEND_EXC_MAP", "backend_errors", "map_backend_error"]

#: library exception -> opendisco exception (checked in order)
BACKEND_EXC_MAP: tuple[tuple[type[BaseException], type[BackendError]], ...] = (
    (ConnectionTimeout, SearchTimeout),
    (OpenSearchException, SearchBackendError),
    (ServerSelectionTimeoutError, StoreUnreachable),
    (PyMongoError, StoreBackendError),
)


#: pymongo's whole text when it cancelled an operation because it dropped the server's pool
#: (the server stopped answering the driver's monitor: paused, partitioned, failing over)
_CANCELLED = "operation cancelled"


def _detail(exc: BaseException) -> str:
    """The library's text, said so an operator can act on it."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, AutoReconnect) and text == _CANCELLED:
        return f"{text} (the store stopped answering; the driver dropped its connections)"
    return text


def map_backend_error(exc: BaseException, what: str) -> BackendError | None:
    """The opendisco error for a library exception, or None when it is not a backend error."""
    for kind, mapped in BACKEND_EXC_MAP:
        if isinstance(exc, kind):
            return mapped(f"{what}: {_detail(exc)}")
    return None


@contextmanager
def backend_errors(what: str, *, not_found: str | None = None) -> Iterator[None]:
    """Run a block of backend I/O; library errors leave it as opendisco errors.

    ``not_found``: an OpenSearch 404 inside the block becomes :class:`NotFound` with this
    message (for lookups of one id the caller named) instead of a backend error.
    """
    try:
        yield
    except SearchNotFound as exc:
        if not_found is not None:
            raise NotFound(not_found) from exc
        raise SearchBackendError(f"{what}: {exc}") from exc
    except (OpenSearchException, PyMongoError) as exc:
        mapped = map_backend_error(exc, what)
        assert mapped is not None
        raise mapped from exc
