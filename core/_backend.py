"""The one place where backend library errors become opendisco errors.

OpenSearch (opensearch-py) and MongoDB (pymongo) raise their own exception trees; every
I/O call of opendisco runs inside :func:`backend_errors`, which maps them through
:data:`BACKEND_EXC_MAP` (first match wins, most specific first) and re-raises
``mapped(f"{what}: {exc}") from exc`` — the pattern of httpx's ``map_httpcore_exceptions``.
Errors that carry meaning for the caller (a 404 that means "absent", a duplicate key that means
"already claimed") are caught *inside* the block, before they reach the map.

A 200 from OpenSearch can still be partial: a search some shards failed (``_shards.failed``,
their hits missing) or that timed out, an ``_mget`` whose documents are error objects.
:func:`whole_search` and :func:`whole_docs` turn those into :class:`SearchBackendError` for
the lookups whose callers read a missing hit as a fact (an item with no impressions, no cap of
its own): the same error a refused lookup raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opensearchpy.exceptions import ConnectionTimeout, OpenSearchException, TransportError
from opensearchpy.exceptions import NotFoundError as SearchNotFound
from pymongo.errors import AutoReconnect, PyMongoError, ServerSelectionTimeoutError

from ._exceptions import (
    BackendError,
    NotFound,
    SearchBackendError,
    SearchTimeout,
    SearchTooLarge,
    StoreBackendError,
    StoreUnreachable,
)

__all__ = [
    "BACKEND_EXC_MAP",
    "backend_errors",
    "index_missing",
    "item_index_missing",
    "map_backend_error",
    "partial",
    "whole_docs",
    "whole_search",
]

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


def index_missing(exc: BaseException) -> bool:
    """Whether the engine answered that the index (or alias) does not exist: 404
    ``index_not_found_exception``, not a document's 404. On a cluster a node behind on the
    cluster state (one resumed after a pause, or that has not applied a new index or alias
    yet) answers so about one the others hold."""
    return getattr(exc, "status_code", None) == 404 and getattr(exc, "error", None) == (
        "index_not_found_exception"
    )


def item_index_missing(answer: Mapping[str, Any]) -> bool:
    """:func:`index_missing` for one item of a ``_bulk`` answer (nothing of it applied)."""
    error = answer.get("error")
    return isinstance(error, Mapping) and error.get("type") == "index_not_found_exception"


def map_backend_error(exc: BaseException, what: str) -> BackendError | None:
    """The opendisco error for a library exception, or None when it is not a backend error
    (an engine's 413, a body over its ``http.max_content_length``: :class:`SearchTooLarge`)."""
    if isinstance(exc, TransportError) and exc.status_code == 413:
        return SearchTooLarge(f"{what}: {_detail(exc)}")
    for kind, mapped in BACKEND_EXC_MAP:
        if isinstance(exc, kind):
            return mapped(f"{what}: {_detail(exc)}")
    return None


@contextmanager
def backend_errors(what: str, *, not_found: str | None = None) -> Iterator[None]:
    """Run a block of backend I/O; library errors leave it as opendisco errors.

    ``not_found``: an OpenSearch 404 inside the block becomes :class:`NotFound` with this
    message (for lookups of one id the caller named) instead of a backend error — the 404 of
    a document, not ``index_not_found_exception``: the index or alias is missing (or unknown
    to a node behind on the cluster state), which the caller's id cannot help (it was
    answered "no such item", 404, in that window).
    """
    try:
        yield
    except SearchNotFound as exc:
        if not_found is not None and not index_missing(exc):
            raise NotFound(not_found) from exc
        raise SearchBackendError(f"{what}: {exc}") from exc
    except (OpenSearchException, PyMongoError) as exc:
        mapped = map_backend_error(exc, what)
        assert mapped is not None
        raise mapped from exc


def partial(resp: Mapping[str, Any]) -> str | None:
    """Why the search answer ``resp`` holds only some of the matches (shards failed, or it
    timed out), or None when it is whole."""
    shards = resp.get("_shards") or {}
    failed = int(shards.get("failed") or 0)
    if not failed and not resp.get("timed_out"):
        return None
    reasons = [str((f.get("reason") or {}).get("type", f)) for f in shards.get("failures") or []]
    said = f"{failed} of {shards.get('total', '?')} shards failed" if failed else "timed out"
    return f"partial answer ({said}: {sorted(set(reasons))[:3]})"


def whole_search(resp: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """``resp``, a search answer, when every shard answered in time; else
    :class:`SearchBackendError` (its hits are some of the matches, not all of them)."""
    if (why := partial(resp)) is not None:
        raise SearchBackendError(f"{what}: {why}")
    return resp


def whole_docs(docs: Sequence[Mapping[str, Any]], what: str) -> Sequence[Mapping[str, Any]]:
    """``docs`` of an ``_mget`` answer when none is an error object (a shard's get queue
    rejected it: not a document that is absent); else :class:`SearchBackendError`."""
    if errors := [d for d in docs if "error" in d]:
        first = errors[0]["error"]
        said = first.get("type", first) if isinstance(first, Mapping) else first
        raise SearchBackendError(f"{what}: {len(errors)} of {len(docs)} documents failed: {said}")
    return docs
