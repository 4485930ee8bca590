"""opendisco.api: the discovery HTTP API (FastAPI on uvicorn).

``create_app`` (``_app``) wires the edge middleware (``_edge``), the error handlers
(``_errors``), the typed dependencies (``_deps``) and the route modules (``routes/``) around a
:class:`Runtime` (``_runtime``: the pipeline behind a breaker and a deadline, the fallback).
"""

from ._app import REQUESTS_GRACE_S, SETTINGS_ENV, STOP_S, app_from_env, create_app
from ._breaker import BreakerState, CircuitBreaker
from ._cursor import CursorCodec
from ._http import BoundedHttpTools, uvicorn_options
from ._keys import ApiKey, ApiKeyStore, create_key, list_keys, revoke_key
from ._metrics import MULTIPROC_ENV
from ._ratelimit import RateLimiter, TokenBucket
from ._runtime import Answer, Runtime

__all__ = [
    "MULTIPROC_ENV",
    "REQUESTS_GRACE_S",
    "SETTINGS_ENV",
    "STOP_S",
    "Answer",
    "ApiKey",
    "ApiKeyStore",
    "BoundedHttpTools",
    "BreakerState",
    "CircuitBreaker",
    "CursorCodec",
    "RateLimiter",
    "Runtime",
    "TokenBucket",
    "app_from_env",
    "create_app",
    "create_key",
    "list_keys",
    "revoke_key",
    "uvicorn_options",
]
