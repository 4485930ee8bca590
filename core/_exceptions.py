"""The one exception tree of opendisco.

Every error raised on purpose by opendisco derives from :class:`OpenDiscoError`.
Library errors (opensearch-py, pymongo, httpx, subprocess) are mapped at the I/O
boundary with ``raise Mapped(msg) from exc``; the CLI turns the tree into
``click.ClickException`` and the API into HTTP status codes (see ``http_status``)::

    OpenDiscoError
    ├── ConfigError                 bad settings / TOML file             (CLI exit 2)
    ├── ServiceError                provisioning or running local servers
    │   └── ServiceTimeout          a server did not become healthy in time (log tail attached)
    ├── BackendError                an I/O call to a backend failed      (HTTP 503)
    │   ├── SearchBackendError      OpenSearch
    │   │   ├── SearchTimeout       OpenSearch did not answer within the deadline
    │   │   ├── SearchTooLarge      a query too large for OpenSearch (its 413; a member's lists;
    │   │   │                         HTTP 422 where no degraded answer is given)
    │   │   └── PartialWrite        a ``_bulk`` applied in part (``unwritten``: the ids it did not)
    │   └── StoreBackendError       MongoDB / FerretDB
    │       └── StoreUnreachable    no server selected in time: the operation was never sent
    ├── InvalidInput                input rejected before any I/O        (HTTP 422)
    │   ├── DocumentInvalid         an item document failed schema validation
    │   ├── EventInvalid            an event failed validation
    │   ├── TemplateParamError      a query template parameter failed validation
    │   ├── BodyTooLarge            a request body over the size limit   (HTTP 413)
    │   ├── BodyTimeout             a request body too slow to arrive    (HTTP 408)
    │   ├── HeadTooLarge            a request head over the size limit   (HTTP 431)
    │   └── UnsupportedMedia        a body in a type or coding not read  (HTTP 415)
    ├── NotFound                    an id that does not exist            (HTTP 404)
    ├── AuthError                   missing/unknown API key              (HTTP 401)
    │   └── Forbidden               key lacks the scope                  (HTTP 403)
    ├── RateLimited                 per-key rate limit                   (HTTP 429)
    ├── Overloaded                  bounded concurrency exhausted        (HTTP 503 + Retry-After)
    └── IndexStateError             alias/index layout is not what an operation needs
        ├── IndexMissing            a write's index or alias does not exist (past retries)
        └── SyncGap                 change-stream history lost: a rebuild is required
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "BackendError",
    "BodyTimeout",
    "BodyTooLarge",
    "ConfigError",
    "DocumentInvalid",
    "EventInvalid",
    "Forbidden",
    "HeadTooLarge",
    "IndexMissing",
    "IndexStateError",
    "InvalidInput",
    "NotFound",
    "OpenDiscoError",
    "Overloaded",
    "PartialWrite",
    "RateLimited",
    "SearchBackendError",
    "SearchTimeout",
    "SearchTooLarge",
    "ServiceError",
    "ServiceTimeout",
    "StoreBackendError",
    "StoreUnreachable",
    "SyncGap",
    "TemplateParamError",
    "UnsupportedMedia",
    "http_status",
    "validation_problems",
]


class OpenDiscoError(Exception):
    """Base class of every error opendisco raises on purpose."""


class ConfigError(OpenDiscoError):
    """Settings could not be loaded or are inconsistent."""


class ServiceError(OpenDiscoError):
    """A local server could not be provisioned, started or stopped."""


class ServiceTimeout(ServiceError):
    """A server did not become healthy in time; the message carries the log tail."""


class BackendError(OpenDiscoError):
    """An I/O call to a backend failed."""


class SearchBackendError(BackendError):
    """OpenSearch rejected a request or could not be reached."""


class SearchTimeout(SearchBackendError):
    """OpenSearch did not answer within the deadline."""


class SearchTooLarge(SearchBackendError):
    """A query too large for OpenSearch: a body over its ``http.max_content_length`` (its
    HTTP 413), or a member's stored lists over what the templates' parameters carry (checked
    before sending). The engine is not down (the API's breaker does not count it) and the same
    request would be refused again: the API answers from its fallback."""


class PartialWrite(SearchBackendError):
    """A ``_bulk`` was applied in part: the documents in ``unwritten`` were not (their items
    failed, e.g. ``429 es_rejected_execution_exception``), every other one was. A caller that
    adds (counters) must count the others as written: writing the whole batch again would add
    them twice. ``unsure``: those of ``unwritten`` whose last send failed without an answer
    (timed out, connection cut): the engine may still apply them (the others were refused)."""

    def __init__(
        self,
        message: str,
        unwritten: frozenset[str] = frozenset(),
        unsure: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(message)
        self.unwritten = unwritten
        self.unsure = unsure


class StoreBackendError(BackendError):
    """MongoDB (or FerretDB) rejected a request or could not be reached."""


class StoreUnreachable(StoreBackendError):
    """No MongoDB server could be selected within the client's server selection timeout: the
    failing operation was never sent, so it cannot land later (a failed *retry* of a sent
    write raises the first attempt's error instead: pymongo's retryable writes)."""


class InvalidInput(OpenDiscoError):
    """Input rejected before any I/O happened."""


class DocumentInvalid(InvalidInput):
    """An item document failed schema validation."""


class EventInvalid(InvalidInput):
    """An event failed validation."""


class TemplateParamError(InvalidInput):
    """A query template parameter is missing, unknown or of the wrong type."""


class BodyTooLarge(InvalidInput):
    """A request body is larger than the API accepts (``api_max_body_bytes``)."""


class BodyTimeout(InvalidInput):
    """A request body did not arrive in full within ``api_body_timeout_s``."""


class HeadTooLarge(InvalidInput):
    """A request's head (its target and header fields) is larger than the API reads."""


class UnsupportedMedia(InvalidInput):
    """A request body in a media type or content coding the route does not read."""


class NotFound(OpenDiscoError):
    """The requested id does not exist."""


class AuthError(OpenDiscoError):
    """The request carries no valid API key."""


class Forbidden(AuthError):
    """The API key lacks the scope this operation needs."""


class RateLimited(OpenDiscoError):
    """The API key exceeded its rate limit."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(OpenDiscoError):
    """Bounded concurrency is exhausted; retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IndexStateError(OpenDiscoError):
    """The alias/index layout is not what the operation needs."""


class IndexMissing(IndexStateError):
    """The index or alias a write targets does not exist: the engine answered so past the
    write's retries (a node behind on the cluster state answers so for a while too)."""


class SyncGap(IndexStateError):
    """The change feed lost history; a full reindex is required (never resume from 'now')."""


_STATUS: tuple[tuple[type[OpenDiscoError], int], ...] = (
    (Forbidden, 403),
    (AuthError, 401),
    (RateLimited, 429),
    (Overloaded, 503),
    (NotFound, 404),
    (BodyTooLarge, 413),
    (BodyTimeout, 408),
    (HeadTooLarge, 431),
    (UnsupportedMedia, 415),
    (InvalidInput, 422),
    (SearchTooLarge, 422),  # the same request is refused again: no retry (no 503)
    (BackendError, 503),
)


def validation_problems(exc: Any, root: str = "value") -> str:
    """A pydantic ``ValidationError`` on one line, ``loc: msg; loc: msg`` (``root`` names an
    error of the whole value): what an operator reads, not pydantic's multi-line report."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or root}: {e['msg']}" for e in exc.errors(include_url=False)
    )


def http_status(exc: OpenDiscoError) -> int:
    """The HTTP status the API answers for ``exc`` (500 only for an unmapped kind)."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500
