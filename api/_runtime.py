"""What a request needs, built once in the app's lifespan: the :class:`Runtime`.

:meth:`Runtime.guarded` is the one place a route calls the served pipeline: it puts the
circuit breaker and the per-request deadline around the :class:`~opendisco.serving.Discovery`
call and turns a timeout, an outage or an open breaker into the fallback's answer
(``degraded``), never a 5xx.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opensearchpy import AsyncOpenSearch

from opendisco._exceptions import (
    AuthError,
    BackendError,
    InvalidInput,
    NotFound,
    SearchTooLarge,
    StoreBackendError,
)
from opendisco._settings import Settings
from opendisco.serving import Discovery, Recommendations, reads_once

from ._breaker import CircuitBreaker
from ._cursor import CursorCodec
from ._fallback import DEADLINE, Fallback, to_served
from ._keys import ApiKeyStore
from ._metrics import Metrics
from ._overload import ENGINE_WAIT, EngineWait, LoopLag, TimedTransport, engine_bound
from ._ratelimit import RateLimiter
from ._ratesync import RateShares

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase

__all__ = ["Answer", "Runtime"]

log = logging.getLogger("opendisco.api")

#: how often a worker publishes the gauges it reads from its parts (:meth:`Runtime.publish`)
PUBLISH_S = 2.0


@dataclass
class Answer:
    """A list as a route serves it: response items, the version that produced them, whether
    it is the fallback's, and the explain trace (only when asked and not degraded)."""

    items: list[dict[str, Any]]
    version: str
    degraded: bool
    explain: dict[str, Any] | None = None
    #: the experiments the list took part in (arm, design, unit, candidates' arms)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    #: the pipeline logged it (served-list log side effect); a fallback answer is not
    logged: bool = False
    #: hard rules the (degraded) answer could not check against current data
    degraded_rules: list[str] = field(default_factory=list)
    #: counted toward exposure when the pipeline picked it; a fallback answer is not
    counted: bool = False

    @property
    def ids(self) -> list[str]:
        return [str(it["id"]) for it in self.items]


@dataclass
class Runtime:
    """Everything a request needs; built in the app lifespan (clients bind to its loop)."""

    settings: Settings
    discovery: Discovery
    db: AsyncDatabase[dict[str, Any]]
    os_client: AsyncOpenSearch
    keys: ApiKeyStore
    rate: RateLimiter
    shares: RateShares
    breaker: CircuitBreaker
    fallback: Fallback
    cursors: CursorCodec
    metrics: Metrics
    lag: LoopLag = field(default_factory=LoopLag)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def publish(self) -> None:
        """This worker's gauges from its parts now. Each worker writes its own, and a scrape is
        served by one of them (Prometheus keeps its connection: always the same one), so each
        publishes them on its own (:meth:`publish_forever`), not only when it serves one."""
        m = self.metrics
        m.breaker_state.set(self.breaker.state.gauge)
        served = self.discovery.served
        m.exposure_unwritten.set(served.unwritten_total())
        m.exposure_dropped.set(served.dropped)
        if (capped := self.fallback.lists.capped_read) is not None:
            m.exposure_capped.set(capped)
        served_log = self.discovery.served_log
        m.served_log_dropped.set(served_log.dropped if served_log is not None else 0)

    async def publish_forever(self) -> None:
        while True:
            self.publish()
            await asyncio.sleep(PUBLISH_S)

    @property
    def version(self) -> str:
        return self.discovery.version

    def engine_silent_s(self) -> float:
        """Seconds since the engine answered any call (0 when the client does not say)."""
        transport = self.os_client.transport
        return transport.silent_for() if isinstance(transport, TimedTransport) else 0.0

    @property
    def deadline_s(self) -> float:
        return self.settings.api_deadline_ms / 1000

    async def guarded(
        self,
        surface: str,
        call: Callable[[], Awaitable[Recommendations]],
        k: int,
        *,
        user_id: str | None = None,
        exclude: Sequence[str] = (),
        explain: bool = False,
        request_id: str | None = None,
    ) -> Answer:
        """The pipeline's answer (an empty list included), or the fallback's (``degraded``,
        every hard rule checked for ``user_id``) when it times out, fails or the breaker is
        open; :class:`~opendisco.Overloaded` (503) when no safe answer exists.

        The breaker counts engine failures only: a backend error other than MongoDB's, or a
        deadline missed while the engine kept the request waiting (``_overload.engine_bound``);
        a deadline missed because this process was busy degrades the answer without counting,
        and so does a MongoDB error (opening the breaker on it sent the requests that need no
        store read, and would have been served, to a fallback that needs one) and a query too
        large for the engine (:class:`SearchTooLarge`: one member's lists, whose engine 413s
        opened the breaker for every member).

        The member is read once per request (:class:`~opendisco.serving.RequestReads`): the
        fallback builds its rules from the pipeline's read when there was one (a second read
        of a member blocked by 60,000 others cost 0.2–0.6 s on FerretDB)."""
        with reads_once():  # the member read once, the fallback included
            reason = "breaker_open"
            if self.breaker.allow():
                wait = EngineWait()
                token = ENGINE_WAIT.set(wait)  # copied into the task wait_for runs the call in
                by = DEADLINE.set(asyncio.get_running_loop().time() + self.deadline_s)
                try:
                    recs = await asyncio.wait_for(call(), self.deadline_s)
                except (InvalidInput, NotFound, AuthError):
                    self.breaker.record_success()  # the backend answered; the request is bad
                    raise
                except asyncio.CancelledError:
                    self.breaker.release()
                    raise
                except TimeoutError:
                    silent = self.engine_silent_s()
                    if engine_bound(wait, self.lag, self.deadline_s, silent):
                        self.breaker.record_failure()
                        reason = "timeout"
                    else:  # local queueing or CPU: not the engine's failure
                        self.breaker.release()
                        reason = "timeout_local"
                except SearchTooLarge as exc:  # this request alone: the engine is not down
                    self.breaker.release()
                    reason = "too_large"
                    log.warning("discovery %s failed: %r", surface, exc)
                except StoreBackendError as exc:  # MongoDB's: the breaker guards the engine
                    self.breaker.release()
                    reason = "store_error"
                    log.warning("discovery %s failed: %r", surface, exc)
                except Exception as exc:  # outage or any backend failure: degrade, never 5xx
                    self.breaker.record_failure()
                    reason = "backend_error" if isinstance(exc, BackendError) else "error"
                    log.warning("discovery %s failed: %r", surface, exc)
                else:
                    self.breaker.record_success()
                    for rule, n in recs.rechecked.items():
                        self.metrics.recheck_dropped.labels(rule).inc(n)
                    for source in recs.source_errors:
                        self.metrics.source_errors.labels(surface, source).inc()
                    return Answer(
                        items=[to_served(r, with_trace=explain) for r in recs.items],
                        version=recs.version,
                        degraded=recs.degraded,
                        explain=recs.explain if explain else None,
                        experiments=recs.experiments,
                        logged=recs.served is not None,
                        counted=recs.counted,
                    )
                finally:
                    DEADLINE.reset(by)
                    ENGINE_WAIT.reset(token)
            self.metrics.degraded.labels(surface, reason).inc()
            fb = await self.fallback.answer(surface, user_id, k, exclude, request_id)
            return Answer(
                items=fb.items,
                version=fb.template_version,
                degraded=True,
                degraded_rules=fb.degraded_rules,
                counted=fb.counted,
            )
