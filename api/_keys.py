"""API keys: generated once, stored hashed (HMAC-SHA256 with a per-key salt) in ``api_keys``.

A key reads ``odk_<key_id>_<secret>``; only ``key_id`` (the document ``_id``), the salt and
the HMAC of the secret are stored, so a database dump reveals no usable key. Scopes are
``read``, ``write`` and ``admin`` (admin implies the other two).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opendisco._exceptions import AuthError, Forbidden, InvalidInput, StoreBackendError

__all__ = [
    "COLLECTION",
    "SCOPES",
    "ApiKey",
    "ApiKeyStore",
    "create_key",
    "hash_secret",
    "list_keys",
    "new_key",
    "parse_key",
    "revoke_key",
]

COLLECTION = "api_keys"
SCOPES = ("read", "write", "admin")
_PREFIX = "odk"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A verified key: what a request is allowed to do."""

    key_id: str
    name: str
    scopes: frozenset[str]
    rate_limit: float | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def hash_secret(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def parse_key(token: str | None) -> tuple[str, str]:
    """``(key_id, secret)`` of a presented key; :class:`AuthError` when malformed or absent."""
    if not token:
        raise AuthError("missing API key (X-API-Key header or Authorization: Bearer)")
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != _PREFIX or len(parts[1]) != 12 or not parts[2]:
        raise AuthError("unknown API key")
    return parts[1], parts[2]


def new_key(
    name: str,
    scopes: Iterable[str],
    rate_limit: float | None = None,
    now: datetime | None = None,
) -> tuple[str, dict[str, Any]]:
    """A fresh key: the plaintext (shown once) and the document to store."""
    scopes = sorted(set(scopes))
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise InvalidInput(f"scopes must be a non-empty subset of {SCOPES}, got {scopes}")
    if not name.strip():
        raise InvalidInput("name must say who the key is for (it is empty)")
    if rate_limit is not None and not (math.isfinite(rate_limit) and rate_limit > 0):
        raise InvalidInput(f"rate_limit must be a finite number > 0, got {rate_limit}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    doc = {
        "_id": key_id,
        "name": name,
        "scopes": scopes,
        "salt": salt,
        "hash": hash_secret(salt, secret),
        "rate_limit": rate_limit,
        "created_at": now or datetime.now(UTC),
        "revoked": False,
        "revoked_at": None,
    }
    return f"{_PREFIX}_{key_id}_{secret}", doc


def _verify(doc: dict[str, Any] | None, secret: str) -> ApiKey:
    if doc is None or not hmac.compare_digest(hash_secret(doc["salt"], secret), doc["hash"]):
        raise AuthError("unknown API key")
    if doc.get("revoked"):
        raise AuthError("revoked API key")
    return ApiKey(
        key_id=doc["_id"],
        name=doc.get("name", ""),
        scopes=frozenset(doc.get("scopes", ())),
        rate_limit=doc.get("rate_limit"),
    )


class ApiKeyStore:
    """Async verification against MongoDB (PyMongo's asyncio client), with a short in-process cache.

    Negative answers are cached too, so a flood of bad keys does not reach the database;
    a revocation takes effect within ``cache_s`` seconds. A lookup the store has not answered
    within ``timeout_s`` (the API gives it the request deadline) fails with
    :class:`StoreBackendError` (503 + Retry-After): on connections gone silent without a
    reset the driver waited for its socket timeout (10 s in the API) and then retried, so
    every request of a key not cached hung far past the deadline.
    """

    def __init__(
        self,
        db: Any,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float | None = None,
    ) -> None:
        self._coll = db[COLLECTION]
        self._cache_s = cache_s
        self._clock = clock
        self._timeout_s = timeout_s
        self._cache: dict[str, tuple[float, ApiKey | AuthError]] = {}

    async def authenticate(self, token: str | None) -> ApiKey:
        key_id, secret = parse_key(token)
        cache_key = hashlib.sha256(token.encode()).hexdigest()  # type: ignore[union-attr]
        now = self._clock()
        hit = self._cache.get(cache_key)
        if hit is not None and hit[0] > now:
            if isinstance(hit[1], AuthError):
                raise AuthError(str(hit[1]))
            return hit[1]
        try:
            async with asyncio.timeout(self._timeout_s):
                doc = await self._coll.find_one({"_id": key_id})
        except TimeoutError as exc:
            raise StoreBackendError(
                f"api key lookup failed: no answer from the store in {self._timeout_s} s"
            ) from exc
        except Exception as exc:  # pymongo errors: the key store is unreachable
            raise StoreBackendError(f"api key lookup failed: {exc}") from exc
        try:
            result: ApiKey | AuthError = _verify(doc, secret)
        except AuthError as exc:
            result = exc
        if self._cache_s > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[cache_key] = (now + self._cache_s, result)
        if isinstance(result, AuthError):
            raise AuthError(str(result))
        return result

    @staticmethod
    def require(key: ApiKey, scope: str) -> None:
        if not key.allows(scope):
            raise Forbidden(f"API key {key.key_id} lacks the {scope!r} scope")


# --- admin (synchronous, for the CLI) ------------------------------------------------


def create_key(
    db: Any, name: str, scopes: Iterable[str], rate_limit: float | None = None
) -> tuple[str, dict[str, Any]]:
    """Store a new key in ``db`` (pymongo database); returns the plaintext and the stored doc."""
    plaintext, doc = new_key(name, scopes, rate_limit)
    db[COLLECTION].insert_one(doc)
    return plaintext, doc


def revoke_key(db: Any, key_id: str) -> bool:
    """Revoke a key by id; False when no such (unrevoked) key exists."""
    res = db[COLLECTION].update_one(
        {"_id": key_id, "revoked": False},
        {"$set": {"revoked": True, "revoked_at": datetime.now(UTC)}},
    )
    return res.modified_count == 1


def list_keys(db: Any) -> list[dict[str, Any]]:
    """Stored keys without salt and hash."""
    docs = db[COLLECTION].find({}, {"salt": 0, "hash": 0}).sort("created_at", 1)
    return list(docs)
