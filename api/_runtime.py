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

from opendisco._exceptions import AuthError, BackendError, InvalidInput, NotFound
from opendisco._settings import Settings
from opendisco.serving import Discovery, Recommendations

from ._breaker import CircuitBreaker
from ._cursor import CursorCodec
from ._fallback import Fallback, to_served
from ._keys import ApiKeyStore
from ._metrics import Metrics
from ._ratelimit import RateLimiter

if TYPE_CHECKING:
    from motor.motor_asyncio import AsyncIOMotorDatabase

__all__ = ["Answer", "Runtime"]

log = logging.getLogger("opendisco.api")


@dataclass
class Answer:
    """A list as a route serves it: response items, the version that produced them, whether
    it is the fallback's, and the explain trace (only when asked and not degraded)."""

    items: list[dict[str, Any]]
    version: str
    degraded: bool
    explain: dict[str, Any] | None = None
    #: the pipeline logged it (served-list log side effect); a fallback answer is not
    logged: bool = False

    @property
    def ids(self) -> list[str]:
        return [str(it["id"]) for it in self.items]


@dataclass
class Runtime:
    """Everything a request needs; built in the app lifespan (clients bind to its loop)."""

    settings: Settings
    discovery: Discovery
    db: AsyncIOMotorDatabase[dict[str, Any]]
    os_client: AsyncOpenSearch
    keys: ApiKeyStore
    rate: RateLimiter
    breaker: CircuitBreaker
    fallback: Fallback
    cursors: CursorCodec
    metrics: Metrics
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.discovery.version

    @property
    def deadline_s(self) -> float:
        return self.settings.api_deadline_ms / 1000

    async def guarded(
        self,
        surface: str,
        call: Callable[[], Awaitable[Recommendations]],
        k: int,
        exclude: Sequence[str] = (),
        *,
        allow_empty: bool = False,
        explain: bool = False,
    ) -> Answer:
        """The pipeline's answer, or the fallback's (``degraded``) when it times out, fails,
        the breaker is open, or (unless ``allow_empty``) it has nothing."""
        reason = "breaker_open"
        if self.breaker.allow():
            try:
                recs = await asyncio.wait_for(call(), self.deadline_s)
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
                    return Answer(
                        items=[to_served(r, with_trace=explain) for r in recs.items],
                        version=recs.version,
                        degraded=recs.degraded,
                        explain=recs.explain if explain else None,
                        logged=recs.served is not None,
                    )
                reason = "empty"
        self.metrics.degraded.labels(surface, reason).inc()
        fb = await self.fallback.get(surface, k, exclude)
        return Answer(items=fb.items, version=fb.template_version, degraded=True)
