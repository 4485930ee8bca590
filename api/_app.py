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
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from fastapi import FastAPI
from opensearchpy import AsyncOpenSearch

from opendisco import clients
from opendisco._cancel import bounded, stop_tasks
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
from ._gc import freeze_startup_heap, freeze_when_loaded
from ._keys import ApiKeyStore
from ._metrics import Metrics
from ._overload import LoopLag, TimedTransport
from ._ratelimit import RateLimiter
from ._ratesync import RateShares
from ._runtime import Runtime
from ._segments import SegmentLists

__all__ = ["REQUESTS_GRACE_S", "SETTINGS_ENV", "STOP_S", "app_from_env", "create_app"]

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
async def _running(
    settings: Settings, discovery: Discovery | None, stops: _StopSignals | None = None
) -> AsyncIterator[Runtime]:
    """Clients, the pipeline (its encoder's load started), the runtime and its background
    tasks; all torn down on exit."""
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
    try:
        rt = await _start(settings, disc, db, os_client)
    except BaseException:  # start-up cut short (a stop signal) or failed: nothing served yet
        await _close(disc, os_client, mongo, CLOSE_S)
        raise
    try:
        yield rt
    finally:
        await _stop(rt, os_client, mongo, stops.at if stops is not None else None)


async def _start(
    settings: Settings, disc: Discovery, db: Any, os_client: AsyncOpenSearch
) -> Runtime:
    """The pipeline (its encoder's load started), the runtime and its background tasks."""
    deadline_s = settings.api_deadline_ms / 1000
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
    install_experiments(disc, db, settings)  # running experiments' arms (drained with disc)
    await disc.warmup()  # the query encoder's load started (it lands in the background)
    if settings.api_gc_freeze:  # the start-up heap out of every collection (p99), and the
        freeze_startup_heap(settings.api_gc_threshold0)  # encoder's once it has landed
        freeze_when_loaded(disc.encoder.start())
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
        asyncio.create_task(rt.publish_forever()),
        asyncio.create_task(rt.shares.run()),
        asyncio.create_task(disc.recover_events_forever()),
        asyncio.create_task(disc.served.flush_forever()),  # also when no answer is served
    ]
    if settings.signal_copies_s > 0:
        rt.tasks.append(asyncio.create_task(disc.copies.run()))
    return rt


#: a stopping process's queued writes are given this long (the engine or store may not answer)
DRAIN_S = 5.0
#: its rate share's withdrawal (a paused store: the others take it over within 3 syncs anyway)
LEAVE_S = 2.0
#: the clients' close when the store does not answer (its ``endSessions``; else up to 2 s)
CLOSE_S = 0.5
#: from the stop signal, the requests in flight (up to :data:`REQUESTS_GRACE_S`), the drain
#: and the close: well under compose's 10 s stop grace
STOP_S = 7.0
#: requests still running this long after the stop signal are cancelled (uvicorn's
#: ``timeout_graceful_shutdown``; a 503 + Retry-After for them, ``_edge``, an event batch
#: going on in the drain): an event batch's own bound, ``max(2, 5 x api_deadline_ms)``,
#: answers 503 before it by default
REQUESTS_GRACE_S = 4.0


async def _stop(
    rt: Runtime, os_client: AsyncOpenSearch, mongo: Any, asked_at: float | None = None
) -> None:
    """Tear down within :data:`STOP_S` when the backends do not answer: the background tasks
    stopped, then the drain and the rate share's withdrawal side by side (each waits on a
    different write), then both clients closed side by side, the store's ``endSessions``
    given what is left (0.5 s when the withdrawal went unanswered). What the drain could not
    write is kept: the served impressions in the served journal and the lists in the spool,
    for the next process here; accepted events are in the store already (the recovery sweep
    applies what a batch cut short left); leases and the rate share not withdrawn expire."""
    loop = asyncio.get_running_loop()
    deadline = (loop.time() if asked_at is None else asked_at) + STOP_S
    disc = rt.discovery
    stuck = await stop_tasks(rt.tasks, timeout_s=1.0)
    if stuck:
        log.warning("background tasks did not stop: %s", stuck)
    # event batches applying, served impressions, the served-list log, the experiments' log
    drain_s = max(0.5, min(DRAIN_S, deadline - CLOSE_S - loop.time()))
    drained, withdrawn = await asyncio.gather(
        bounded(disc.drain(), drain_s),
        bounded(rt.shares.leave(), min(LEAVE_S, drain_s)),
        return_exceptions=True,
    )
    if isinstance(drained, BaseException):  # the engine or store is down or paused
        left = disc.served.unwritten_total()
        log.warning("shutdown: %d served impressions not counted (%r)", left, drained)
    if isinstance(withdrawn, BaseException):
        log.info("shutdown: rate share not withdrawn (it expires): %r", withdrawn)
    # a store that did not take the withdrawal will not answer ``endSessions`` either
    end_sessions_s = CLOSE_S if isinstance(withdrawn, BaseException) else 2.0
    await _close(disc, os_client, mongo, max(CLOSE_S, min(end_sessions_s, deadline - loop.time())))


async def _close(disc: Discovery, os_client: AsyncOpenSearch, mongo: Any, timeout_s: float) -> None:
    """The served journal and the served-list spool closed (kept when something is left: the
    next process here writes it), then both clients side by side, each within ``timeout_s``
    (the store's ``endSessions``: :func:`~opendisco.clients.close_mongo`)."""
    disc.served.detach()
    if (served_log := disc.served_log) is not None:
        served_log.close_spool()
    Metrics.process_exited(os.getpid())
    await asyncio.gather(
        bounded(os_client.close(), timeout_s),
        clients.close_mongo(mongo, timeout_s),
        return_exceptions=True,
    )


class _StopSignals:
    """SIGTERM and SIGINT as this process's server takes them (its handlers chained: still
    called), noted while the app's lifespan runs. During start-up one cancels it: uvicorn
    only sets its ``should_exit`` and lets the start-up run to its end — the counters index's
    ensure, the cursor secret's lookup, each waiting on a backend that does not answer —
    before it stops (a replica stopped while it started took 60–90 s to
    exit); one its server took before (while it imported the app) cancels it at once. The
    first one's time starts the teardown's budget (:data:`STOP_S`), the requests in flight
    included. Only Python handlers are chained (a default SIGTERM still ends the process),
    and only in the main thread."""

    def __init__(self) -> None:
        self.at: float | None = None  # loop time of the first stop signal
        self._saved: dict[int, Any] = {}
        self._starting: asyncio.Future[Any] | None = None

    def install(self, starting: asyncio.Future[Any]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        self._starting = starting

        def on_signal(sig: int, frame: FrameType | None) -> None:
            if self.at is None:
                self.at = loop.time()
            if self._starting is not None:
                loop.call_soon_threadsafe(self._starting.cancel)
            self._saved[sig](sig, frame)

        for sig in (signal.SIGINT, signal.SIGTERM):
            if callable(handler := signal.getsignal(sig)):
                self._saved[sig] = handler
                signal.signal(sig, on_signal)
                if getattr(getattr(handler, "__self__", None), "should_exit", False) is True:
                    self.at = loop.time()  # uvicorn's server, asked to stop already
                    starting.cancel()

    def started(self) -> None:
        self._starting = None

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()


def create_app(settings: Settings, discovery: Discovery | None = None) -> FastAPI:
    """The discovery API. ``discovery`` defaults to ``opendisco.serving.Discovery`` built
    in the lifespan on the app's own clients (so it binds to the serving event loop)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stops = _StopSignals()
        try:
            async with contextlib.AsyncExitStack() as stack:
                starting = asyncio.ensure_future(
                    stack.enter_async_context(_running(settings, discovery, stops))
                )
                stops.install(starting)
                try:
                    app.state.runtime = await starting
                except asyncio.CancelledError:
                    if stops.at is None:
                        raise
                    # started with nothing to serve: the server sees its stop and exits
                    log.warning("stopped during start-up: nothing served, nothing to drain")
                stops.started()
                try:
                    yield
                finally:
                    app.state.runtime = None
        finally:
            stops.restore()

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
