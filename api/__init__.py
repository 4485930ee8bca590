"""opendisco.api: the discovery HTTP API (FastAPI on uvicorn)."""

from ._app import Runtime, create_app
from ._breaker import BreakerState, CircuitBreaker
from ._cursor import CursorCodec
from ._keys import ApiKey, ApiKeyStore, create_key, list_keys, revoke_key
from ._ratelimit import RateLimiter, TokenBucket

__all__ = [
    "ApiKey",
    "ApiKeyStore",
    "BreakerState",
    "CircuitBreaker",
    "CursorCodec",
    "RateLimiter",
    "Runtime",
    "TokenBucket",
    "create_app",
    "create_key",
    "list_keys",
    "revoke_key",
]
