"""The FastAPI app: ``create_app(settings, discovery=None)``.

Request path (outside in): :class:`_Edge` (request id, latency histogram, bounded concurrency
-> 503) -> auth dependency (key -> 401/403, token bucket -> 429) -> validation (422) ->
endpoint -> :meth:`Runtime.guarded` (circuit breaker + per-request deadline around the
Discovery call; on timeout, outage or an open breaker the fallback answers, ``degraded``).
Errors of the opendisco tree become statuses through :func:`opendisco.http_status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from opendisco import clients
from opendisco._domain import ID_MAX_LENGTH, ID_PATTERN, UserSurface
from opendisco._exceptions import (
    AuthError,
    BackendError,
    InvalidInput,
    NotFound,
    OpenDiscoError,
    Overloaded,
    RateLimited,
    http_status,
)
from opendisco._settings import Settings
from opendisco.serving import Discovery, Recommendations

from ._breaker import BreakerState, CircuitBreaker
from ._concurrency import ConcurrencyLimiter
from ._cursor import CursorCodec
from ._fallback import Fallback, to_served
from ._gc import freeze_startup_heap
from ._impressions import ImpressionLog
from ._keys import ApiKey, ApiKeyStore
from ._metrics import Metrics
from ._models import (
    ErrorResponse,
    EventBatch,
    EventsResponse,
    HealthResponse,
    ReadyResponse,
    RecommendationsResponse,
)
from ._ratelimit import RateLimiter

__all__ = ["Runtime", "create_app"]

log = logging.getLogger("opendisco.api")

_RID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_ANONYMOUS = ApiKey("anonymous", "auth disabled", frozenset({"read", "write", "admin"}))
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": desc}
    for status, desc in (
        (401, "Missing, unknown or revoked API key."),
        (403, "The key lacks the scope (explain=true needs admin)."),
        (404, "Unknown id."),
        (422, "Invalid input."),
        (429, "Rate limited (see Retry-After)."),
        (503, "Saturated or no answer at all (see Retry-After)."),
    )
}


def _error_response(exc: OpenDiscoError, request_id: str, detail: Any = None) -> JSONResponse:
    status = http_status(exc)
    headers = {"X-Request-ID": request_id}
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(max(1, round(retry + 0.499)))
    body = {
        "request_id": request_id,
        "error": {"type": type(exc).__name__, "message": str(exc), "detail": detail},
    }
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class Runtime:
    """Everything a request needs; built in the app lifespan (clients bind to its loop)."""

    settings: Settings
    discovery: Discovery
    db: Any
    os_client: Any
    keys: ApiKeyStore
    rate: RateLimiter
    breaker: CircuitBreaker
    fallback: Fallback
    cursors: CursorCodec
    impressions: ImpressionLog
    metrics: Metrics
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.discovery.version

    async def guarded(
        self,
        surface: str,
        call: Callable[[], Awaitable[Any]],
        k: int,
        exclude: Sequence[str] = (),
        allow_empty: bool = False,
    ) -> tuple[Recommendations | None, dict[str, Any] | None]:
        """``(recommendations, None)`` or ``(None, fallback answer dict)`` when degraded."""
        reason = "breaker_open"
        if self.breaker.allow():
            try:
                recs = await asyncio.wait_for(call(), self.settings.api_deadline_ms / 1000)
            except (InvalidInput, NotFound, AuthError):
                self.breaker.record_success()  # the backend answered; the request is bad
                raise
            except asyncio.CancelledError:
                self.breaker.release()
                raise
            except TimeoutError:
                self.breaker.record_failure()
                reason = "timeout"
            except Exception as exc:  # outage or any backend failure: degrade, never 5xx
                self.breaker.record_failure()
                reason = "backend_error" if isinstance(exc, BackendError) else "error"
                log.warning("discovery %s failed: %r", surface, exc)
            else:
                self.breaker.record_success()
                if recs.items or allow_empty:
                    return recs, None
                reason = "empty"
        self.metrics.degraded.labels(surface, reason).inc()
        fb = await self.fallback.get(surface, k, exclude)
        return None, {"items": fb.items, "template_version": fb.template_version}


class _Edge:
    """Pure-ASGI outer layer: request id, latency, bounded concurrency (503 + Retry-After)."""

    def __init__(
        self, app: ASGIApp, limiter: ConcurrencyLimiter, get_metrics: Callable[[], Metrics | None]
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.get_metrics = get_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode(
            "latin-1"
        )
        rid = incoming if _RID.match(incoming) else uuid.uuid4().hex
        scope["state"] = {**scope.get("state", {}), "request_id": rid}
        status = 500

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        metrics = self.get_metrics()
        started = time.perf_counter()
        limited = scope["path"].startswith("/v1/")
        if limited and not self.limiter.try_acquire():
            if metrics is not None:
                metrics.rejected.labels("saturated").inc()
            resp = _error_response(Overloaded("too many requests in flight", 1.0), rid)
            await resp(scope, receive, send_with_id)
            return
        if metrics is not None:
            metrics.in_flight.set(self.limiter.in_flight)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if limited:
                self.limiter.release()
            if metrics is not None:
                route = scope.get("route")
                label = getattr(route, "path", "unmatched")
                metrics.latency.labels(label, scope["method"], str(status)).observe(
                    time.perf_counter() - started
                )


_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (odk_...).")


def _path_id(description: str) -> Any:
    return Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, description=description)


def runtime(request: Request) -> Runtime:
    rt = request.app.state.runtime
    if rt is None:
        raise Overloaded("starting up", 1.0)
    return rt


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
        wait = rt.rate.take(key.key_id, key.rate_limit)
        if wait > 0:
            raise RateLimited(f"rate limit of key {key.key_id} exceeded", wait)
        return key

    return dependency


ReadKey = Annotated[ApiKey, Depends(scoped("read"))]
WriteKey = Annotated[ApiKey, Depends(scoped("write"))]
K = Annotated[int, Query(ge=1, le=100, description="Number of items (1..100).")]
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
        max_length=65536,
        pattern=r"^[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+$",
        description="next_cursor of the previous page (opaque, signed).",
    ),
]
QueryQ = Annotated[
    str,
    Query(
        min_length=1,
        max_length=1000,
        pattern=r"[^\s\x1c-\x1f]",  # not blank
        description="Query text (not blank).",
    ),
]


def create_app(settings: Settings, discovery: Discovery | None = None) -> FastAPI:
    """The discovery API. ``discovery`` defaults to ``opendisco.serving.Discovery`` built
    in the lifespan on the app's own clients (so it binds to the serving event loop)."""
    deadline_s = settings.api_deadline_ms / 1000
    limiter = ConcurrencyLimiter(settings.api_max_concurrency)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        os_client = clients.async_opensearch(
            settings,
            timeout=max(1.0, 4 * deadline_s),
            max_retries=0,
            retry_on_timeout=False,
            maxsize=max(10, settings.api_max_concurrency),
        )
        mongo = clients.motor(settings, serverSelectionTimeoutMS=2000)
        db = mongo[settings.mongo_db]
        disc = discovery if discovery is not None else Discovery(settings, os_client, db)
        await disc.warmup()  # the query encoder, before the first request's deadline
        if settings.api_gc_freeze:  # the encoder's heap out of every collection (p99)
            freeze_startup_heap(settings.api_gc_threshold0)
        metrics = Metrics()

        def on_change(old: BreakerState, new: BreakerState) -> None:
            metrics.breaker_state.set(new.gauge)
            metrics.breaker_transitions.labels(new.value).inc()
            log.warning("circuit breaker %s -> %s", old.value, new.value)

        secret = (settings.api_cursor_secret or "").encode() or secrets.token_bytes(32)
        rt = Runtime(
            settings=settings,
            discovery=disc,
            db=db,
            os_client=os_client,
            keys=ApiKeyStore(db, cache_s=settings.api_key_cache_s),
            rate=RateLimiter(settings.api_rate_limit, settings.api_rate_burst),
            breaker=CircuitBreaker(
                settings.api_breaker_failures, settings.api_breaker_reset_s, on_change=on_change
            ),
            fallback=Fallback(
                disc,
                db,
                k=settings.api_fallback_k,
                items_collection=settings.items_collection,
                timeout_s=max(2.0, 5 * deadline_s),
            ),
            cursors=CursorCodec(secret, settings.api_cursor_ttl_s, settings.api_cursor_max_ids),
            impressions=ImpressionLog(db),
            metrics=metrics,
        )
        rt.tasks = [
            asyncio.create_task(rt.fallback.run(settings.api_fallback_refresh_s)),
            asyncio.create_task(rt.impressions.run()),
        ]
        app.state.runtime = rt
        try:
            yield
        finally:
            for task in rt.tasks:
                task.cancel()
            _, stuck = await asyncio.wait(rt.tasks, timeout=5.0)
            if stuck:
                log.warning("background tasks did not stop: %s", stuck)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(rt.impressions.drain(), 5.0)
            app.state.runtime = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(os_client.close(), 5.0)
            mongo.close()

    app = FastAPI(
        title="opendisco discovery API",
        version="1",
        description="Recommendations, similar items and search composed inside OpenSearch, "
        "reranked in Python; degraded answers (flagged) when the backend is slow or down.",
        lifespan=lifespan,
    )
    app.state.runtime = None
    app.add_middleware(
        _Edge, limiter=limiter, get_metrics=lambda: getattr(app.state.runtime, "metrics", None)
    )

    def rid_of(request: Request) -> str:
        return str(request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex)

    @app.exception_handler(OpenDiscoError)
    async def _od_error(request: Request, exc: OpenDiscoError) -> JSONResponse:
        rt = request.app.state.runtime
        if rt is not None and isinstance(exc, RateLimited):
            rt.metrics.rejected.labels("rate_limited").inc()
        return _error_response(exc, rid_of(request))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg")),
                "type": str(e.get("type")),
            }
            for e in exc.errors()
        ]
        return _error_response(InvalidInput("request validation failed"), rid_of(request), detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        rid = rid_of(request)
        body = {
            "request_id": rid,
            "error": {"type": "HTTPError", "message": str(exc.detail), "detail": None},
        }
        return JSONResponse(body, status_code=exc.status_code, headers={"X-Request-ID": rid})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        rid = rid_of(request)
        body = {
            "request_id": rid,
            "error": {"type": "InternalError", "message": "internal error", "detail": None},
        }
        return JSONResponse(body, status_code=500, headers={"X-Request-ID": rid})

    def check_explain(key: ApiKey, explain: bool) -> None:
        if explain:
            ApiKeyStore.require(key, "admin")

    def answer(
        rt: Runtime,
        request: Request,
        key: ApiKey,
        surface: str,
        user_id: str | None,
        recs: Recommendations | None,
        fallback: dict[str, Any] | None,
        explain: bool,
        next_served: list[str] | None = None,
    ) -> dict[str, Any]:
        rid = rid_of(request)
        if fallback is not None:
            items = fallback["items"]
            version = fallback["template_version"]
            degraded, explained = True, None
        else:
            assert recs is not None
            items = [to_served(r, with_trace=explain) for r in recs.items]
            version, degraded = recs.version, recs.degraded
            explained = recs.explain if explain else None
        ids = [it["id"] for it in items]
        next_cursor = None
        if next_served is not None:
            next_cursor = rt.cursors.encode(user_id or "", surface, [*next_served, *ids])
        rt.impressions.log(
            {
                "_id": rid,
                "request_id": rid,
                "at": datetime.now(UTC),
                "key_id": key.key_id,
                "user_id": user_id,
                "surface": surface,
                "version": version,
                "degraded": degraded,
                "items": [{"id": i, "position": p} for p, i in enumerate(ids)],
            }
        )
        return {
            "request_id": rid,
            "template_version": version,
            "surface": surface,
            "degraded": degraded,
            "items": items,
            "next_cursor": next_cursor,
            "explain": explained,
        }

    read_opts: dict[str, Any] = {
        "response_model": RecommendationsResponse,
        "responses": _ERRORS,
        "response_model_exclude_none": False,
    }

    @app.get("/v1/users/{user_id}/recommendations", tags=["discovery"], **read_opts)
    async def recommendations(
        request: Request,
        key: ReadKey,
        user_id: UserPath,
        surface: SurfaceQ = UserSurface.for_you,
        k: K = 20,
        cursor: CursorQ = None,
        explain: Explain = False,
    ) -> dict[str, Any]:
        """Personal recommendations; pages of one session (``cursor``) never repeat an item."""
        check_explain(key, explain)
        rt = runtime(request)
        served = rt.cursors.decode(cursor, user_id, surface.value) if cursor else []
        recs, fb = await rt.guarded(
            surface.value,
            lambda: rt.discovery.recommend(
                user_id, surface=surface.value, k=k, exclude=tuple(served), explain=explain
            ),
            k,
            served,
        )
        return answer(rt, request, key, surface.value, user_id, recs, fb, explain, served)

    @app.get("/v1/items/{item_id}/similar", tags=["discovery"], **read_opts)
    async def similar(
        request: Request,
        key: ReadKey,
        item_id: ItemPath,
        k: K = 20,
        user_id: UserQ = None,
        explain: Explain = False,
    ) -> dict[str, Any]:
        """Items similar to ``item_id`` (optionally personalised for ``user_id``)."""
        check_explain(key, explain)
        rt = runtime(request)
        recs, fb = await rt.guarded(
            "similar",
            lambda: rt.discovery.similar(item_id, k, user_id=user_id, explain=explain),
            k,
            [item_id],
        )
        return answer(rt, request, key, "similar", user_id, recs, fb, explain)

    @app.get("/v1/search", tags=["discovery"], **read_opts)
    async def search(
        request: Request,
        key: ReadKey,
        q: QueryQ,
        user_id: UserQ = None,
        k: K = 20,
        explain: Explain = False,
    ) -> dict[str, Any]:
        """Hybrid (BM25 + k-NN) search, reranked for ``user_id`` when given."""
        check_explain(key, explain)
        rt = runtime(request)
        recs, fb = await rt.guarded(
            "search",
            lambda: rt.discovery.search(q, user_id=user_id, k=k, explain=explain),
            k,
            allow_empty=True,
        )
        return answer(rt, request, key, "search", user_id, recs, fb, explain)

    @app.post("/v1/events", tags=["events"], response_model=EventsResponse, responses=_ERRORS)
    async def events(request: Request, key: WriteKey, batch: EventBatch) -> dict[str, Any]:
        """Record a batch of events; an event id seen before is counted once (``duplicates``)."""
        rt = runtime(request)
        docs = [e.model_dump(mode="python", exclude_none=True) for e in batch.events]
        try:
            res = await asyncio.wait_for(rt.discovery.record_events(docs), max(2.0, 5 * deadline_s))
        except TimeoutError as exc:
            raise Overloaded("event store did not answer in time", 1.0) from exc
        except OpenDiscoError:
            raise
        except Exception as exc:
            raise BackendError(f"recording events failed: {exc!r}") from exc
        rejected = [
            {"index": int(r[0]), "reason": str(r[1])}
            if isinstance(r, tuple | list)
            else {"index": int(r["index"]), "reason": str(r["reason"])}
            for r in (getattr(res, "rejected", None) or [])
        ]
        return {
            "request_id": rid_of(request),
            "template_version": rt.version,
            "accepted": int(res.accepted),
            "duplicates": int(res.duplicates),
            "rejected": rejected,
        }

    @app.get("/healthz", tags=["ops"], response_model=HealthResponse)
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "A backend is unreachable."}},
    )
    async def readyz(request: Request) -> JSONResponse:
        """OpenSearch and MongoDB answer."""
        rt = runtime(request)

        async def check(coro: Awaitable[Any]) -> bool:
            try:
                return bool(await asyncio.wait_for(coro, 1.0)) or True
            except Exception:
                return False

        os_ok, mongo_ok = await asyncio.gather(
            check(rt.os_client.cluster.health()), check(rt.db.command("ping"))
        )
        checks = {"opensearch": os_ok, "mongo": mongo_ok}
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus metrics (latency per route, degraded answers, breaker state)."""
        rt = runtime(request)
        rt.metrics.breaker_state.set(rt.breaker.state.gauge)
        return PlainTextResponse(
            generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    return app
