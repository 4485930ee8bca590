"""The app factory: ``create_app(settings, discovery=None)``.

Request path (outside in): :class:`~opendisco.api._edge.Edge` (request id, latency histogram,
admission control: bounded work and queue, shed -> 503) -> the scoped key dependency
(401/403, token bucket -> 429) -> validation (422) -> the route (``routes/``) ->
:meth:`Runtime.guarded` (circuit breaker and per-request deadline around the Discovery call;
on timeout, outage or an open breaker the fallback answers, ``degraded``, every hard rule
kept). Errors of the opendisco tree become statuses in ``_errors``.
The :class:`Runtime` is built in the lifespan, so every client binds to the serving loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from opendisco import clients
from opendisco._cancel import stop_tasks
from opendisco._settings import Settings
from opendisco.experiments import install as install_experiments
from opendisco.serving import Discovery
from opendisco.signals import ServedJournal, ServedSpool

from . import routes
from ._admission import Admission
from ._breaker import BreakerState, CircuitBreaker
from ._cursor import CursorCodec, shared_secret
from ._edge import Edge
from ._errors import install_error_handlers
from ._fallback import Fallback
from ._gc import freeze_startup_heap
from ._keys import ApiKeyStore
from ._metrics import Metrics
from ._overload import LoopLag, TimedTransport
from ._ratelimit import RateLimiter
from ._ratesync import RateShares
from ._runtime import Runtime
from ._segments import SegmentLists

__all__ = ["SETTINGS_ENV", "app_from_env", "create_app"]

#: how ``opendisco serve --workers N`` hands its settings to the worker processes (JSON)
SETTINGS_ENV = "OPENDISCO_SERVE_SETTINGS"

log = logging.getLogger("opendisco.api")


def _breaker(settings: Settings, metrics: Metrics) -> CircuitBreaker:
    def on_change(old: BreakerState, new: BreakerState) -> None:
        metrics.breaker_state.set(new.gauge)
        metrics.breaker_transitions.labels(new.value).inc()
        log.warning("circuit breaker %s -> %s", old.value, new.value)

    return CircuitBreaker(
        settings.api_breaker_failures, settings.api_breaker_reset_s, on_change=on_change
    )


@asynccontextmanager
async def _running(settings: Settings, discovery: Discovery | None) -> AsyncIterator[Runtime]:
    """Clients, the pipeline (encoder warmed up), the runtime and its background tasks; all
    torn down on exit."""
    deadline_s = settings.api_deadline_ms / 1000
    os_client = clients.async_opensearch(
        settings,
        timeout=max(1.0, 4 * deadline_s),
        max_retries=0,
        retry_on_timeout=False,
        maxsize=max(10, 2 * settings.api_max_concurrency),
        transport_class=TimedTransport,  # engine waits per request (what the breaker counts)
        hung_after=deadline_s / 2,  # a call the deadline cut on a silent node: out of rotation
    )
    # an operation MongoDB has not answered within a third of the claim lease fails (its
    # connection closed): with no socket timeout the driver waited forever on connections
    # whose server went silent without a reset (a host lost, a partition), and one such
    # claim update held the lock every later one takes while the claims expired under it —
    # no batch applied again until a restart, and a retry that took the claims over counted
    # the effects again. A third: a hung update fails before the lease its renewals keep.
    socket_ms = int(min(settings.mongo_socket_timeout_s, settings.events_claim_lease_s / 3) * 1000)
    mongo = clients.mongo_async(settings, serverSelectionTimeoutMS=2000, socketTimeoutMS=socket_ms)
    db = mongo[settings.mongo_db]
    disc = discovery if discovery is not None else Discovery(settings, os_client, db)
    # this process serves members: each page counts toward exposure when the pipeline picks
    # it, before another request can pick its items (serving._caps)
    disc.caps.count = disc.record_served
    if settings.exposure_count_served and settings.exposure_journal:
        # what a process killed here left unwritten is counted, before anything is served
        try:
            disc.served.attach(*ServedJournal.for_settings(settings))
        except OSError as exc:
            log.error("served journal not opened (%r): a kill -9 loses unflushed counts", exc)
    served_log = disc.served_log
    if served_log is not None and settings.served_log_spool_mb > 0:
        # the lists a process killed here could not write are written, before any new one
        try:
            served_log.attach_spool(ServedSpool.for_settings(settings))
        except OSError as exc:
            log.error("served-list spool not opened (%r): an outage's lists stay in memory", exc)
    _, exposures = install_experiments(disc, db, settings)  # running experiments' arms
    await disc.warmup()  # the query encoder, before the first request's deadline
    if settings.api_gc_freeze:  # the encoder's heap out of every collection (p99)
        freeze_startup_heap(settings.api_gc_threshold0)
    metrics = Metrics()
    try:
        secret = await asyncio.wait_for(shared_secret(db, settings.api_cursor_secret), 10.0)
    except Exception as exc:  # the store is down at start-up: cursors stay process-local
        log.error("no shared cursor secret (%r): this process signs with its own", exc)
        secret = secrets.token_bytes(32)
    rt = Runtime(
        settings=settings,
        discovery=disc,
        db=db,
        os_client=os_client,
        # the store's answer bounded (a silent store: 503, not a socket timeout), but never
        # under 1 s: a lookup a busy event loop delays is not the store failing (shed instead)
        keys=ApiKeyStore(db, cache_s=settings.api_key_cache_s, timeout_s=max(deadline_s, 1.0)),
        rate=RateLimiter(settings.api_rate_limit, settings.api_rate_burst),
        shares=RateShares(db, settings.api_rate_sync_s),
        breaker=_breaker(settings, metrics),
        fallback=Fallback(
            disc,
            db,
            SegmentLists(
                disc,
                k=settings.api_fallback_k,
                band=settings.api_fallback_age_band,
                timeout_s=max(2.0, 5 * deadline_s),
            ),
            items_collection=settings.items_collection,
            store_timeout_s=settings.api_fallback_store_timeout_ms / 1000,
            refresh_s=settings.api_fallback_refresh_s,
            cold_timeout_s=max(2.0, 5 * deadline_s),
            fill_reserve_s=deadline_s / 2,
        ),
        cursors=CursorCodec(secret, settings.api_cursor_ttl_s, settings.api_cursor_max_ids),
        metrics=metrics,
        lag=LoopLag(),
    )
    disc.fill = rt.fallback  # a page a failed candidate source left short: from its lists
    rt.tasks = [
        asyncio.create_task(rt.fallback.run()),
        asyncio.create_task(rt.lag.run()),
        asyncio.create_task(rt.shares.run()),
        asyncio.create_task(disc.recover_events_forever()),
        asyncio.create_task(disc.served.flush_forever()),  # also when no answer is served
    ]
    if settings.signal_copies_s > 0:
        rt.tasks.append(asyncio.create_task(disc.copies.run()))
    try:
        yield rt
    finally:
        stuck = await stop_tasks(rt.tasks)
        if stuck:
            log.warning("background tasks did not stop: %s", stuck)
        try:  # event batches applying, served impressions, the served-list log
            await asyncio.wait_for(disc.drain(), 5.0)
        except Exception as exc:  # the engine is down or paused: what it could not take
            left = disc.served.unwritten_total()
            log.warning("shutdown: %d served impressions not counted (%r)", left, exc)
        disc.served.detach()  # kept when something is left: the next process here counts it
        if served_log is not None:
            served_log.close_spool()  # likewise: the next process here writes it back
        with contextlib.suppress(Exception):
            await asyncio.wait_for(exposures.drain(), 5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(rt.shares.leave(), 2.0)
        Metrics.process_exited(os.getpid())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(os_client.close(), 5.0)
        await clients.close_mongo(mongo)


def create_app(settings: Settings, discovery: Discovery | None = None) -> FastAPI:
    """The discovery API. ``discovery`` defaults to ``opendisco.serving.Discovery`` built
    in the lifespan on the app's own clients (so it binds to the serving event loop)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _running(settings, discovery) as rt:
            app.state.runtime = rt
            try:
                yield
            finally:
                app.state.runtime = None

    app = FastAPI(
        title="opendisco discovery API",
        version="1",
        description="Recommendations, similar items and search composed inside OpenSearch, "
        "reranked in Python; degraded answers (flagged) when the backend is slow or down.",
        lifespan=lifespan,
    )
    app.state.runtime = None

    def current_metrics() -> Metrics | None:
        rt: Runtime | None = app.state.runtime
        return rt.metrics if rt is not None else None

    admission = Admission(
        settings.api_max_concurrency,
        max_wait_s=settings.api_queue_timeout_ms / 1000,
        max_queue=settings.api_max_queue,
        target_s=settings.api_deadline_ms / 2000 if settings.api_adaptive_concurrency else None,
    )
    app.add_middleware(
        Edge,
        admission=admission,
        get_metrics=current_metrics,
        max_body_bytes=settings.api_max_body_bytes,
        body_timeout_s=settings.api_body_timeout_s,
    )
    install_error_handlers(app)
    for router in (routes.discovery, routes.events, routes.ops, routes.playground):
        app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """The app of one ``opendisco serve --workers N`` worker: the settings the command
    resolved, passed as JSON in :data:`SETTINGS_ENV` (uvicorn imports this factory by name)."""
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise RuntimeError(f"{SETTINGS_ENV} is not set (start workers with opendisco serve)")
    return create_app(Settings.model_validate_json(raw))
