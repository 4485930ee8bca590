"""Who may use the playground: an admin API key, then a session cookie with CSRF protection.

A browser signs in once with an admin key (``POST /playground/session``); the server answers
with a random session token in an ``HttpOnly; SameSite=Strict`` cookie scoped to
``/playground`` and a separate CSRF token the page keeps in memory and sends back as
``X-CSRF-Token`` on every state-changing request (synchronizer token: an attacker's page can
make the browser send the cookie, never read or guess the token). Sessions live in MongoDB
(``playground_sessions``) keyed by the SHA-256 of the token, so a database dump holds no usable
session; every request re-checks that the key behind the session is still an unrevoked admin
key, so revoking a key ends its sessions at once. Scripts may send the key itself
(``X-API-Key`` / ``Authorization: Bearer``) instead of a cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request, Response

from opendisco._backend import backend_errors
from opendisco._exceptions import AuthError, Forbidden, RateLimited

from .._keys import COLLECTION as KEYS
from .._keys import ApiKey, ApiKeyStore
from .._runtime import Runtime

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "SESSIONS",
    "Member",
    "authenticate",
    "end_session",
    "session_info",
    "start_session",
]

SESSIONS = "playground_sessions"
COOKIE = "odk_playground"
CSRF_HEADER = "x-csrf-token"
_PATH = "/playground"
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Member:
    """The signed-in engineer: the admin key's id and name (drafts are signed with them)."""

    key_id: str
    name: str
    csrf: str | None = None  # None: authenticated by the key itself

    def as_author(self) -> dict[str, str]:
        return {"key_id": self.key_id, "name": self.name}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _header_key(request: Request) -> str | None:
    token = request.headers.get("x-api-key")
    if token is None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
    return token


def _rate(rt: Runtime, key: ApiKey) -> None:
    wait = rt.rate.take(key.key_id, key.rate_limit)
    if wait > 0:
        raise RateLimited(f"rate limit of key {key.key_id} exceeded", wait)


async def _admin_key(rt: Runtime, key_id: str) -> ApiKey:
    """The key behind a session, re-read: revoked or demoted keys end their sessions."""
    with backend_errors("api key lookup failed"):
        doc = await rt.db[KEYS].find_one({"_id": key_id}, {"salt": 0, "hash": 0})
    if doc is None or doc.get("revoked"):
        raise AuthError("the session's API key was revoked; sign in again")
    key = ApiKey(
        key_id, doc.get("name", ""), frozenset(doc.get("scopes", ())), doc.get("rate_limit")
    )
    ApiKeyStore.require(key, "admin")
    return key


async def authenticate(request: Request, rt: Runtime) -> Member:
    """The request's engineer: auth off → anonymous; a key header → that admin key; else the
    session cookie, and on unsafe methods the matching ``X-CSRF-Token`` (403 without)."""
    if not rt.settings.api_auth:
        return Member("anonymous", "auth disabled")
    token = _header_key(request)
    if token is not None:
        key = await rt.keys.authenticate(token)
        rt.keys.require(key, "admin")
        _rate(rt, key)
        return Member(key.key_id, key.name)
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        raise AuthError("sign in with an admin API key (no playground session)")
    with backend_errors("session lookup failed"):
        session = await rt.db[SESSIONS].find_one({"_id": _digest(cookie)})
    now = datetime.now(UTC)
    if session is None or _aware(session["expires_at"]) <= now:
        raise AuthError("the playground session expired; sign in again")
    key = await _admin_key(rt, session["key_id"])
    if request.method not in _SAFE:
        # headers are latin-1 text: compared as bytes (a str with non-ASCII is a TypeError)
        sent = request.headers.get(CSRF_HEADER, "").encode("latin-1")
        if not sent or not hmac.compare_digest(sent, str(session["csrf"]).encode()):
            raise Forbidden("missing or wrong X-CSRF-Token for this session")
    _rate(rt, key)
    return Member(key.key_id, key.name, session["csrf"])


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


async def start_session(rt: Runtime, response: Response, key_text: str, secure: bool) -> Member:
    """Check an admin key, store a new session and set its cookie; expired sessions are
    purged here (FerretDB has no TTL index)."""
    key = await rt.keys.authenticate(key_text)
    rt.keys.require(key, "admin")
    _rate(rt, key)
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    ttl = rt.settings.playground_session_s
    with backend_errors("storing the playground session failed"):
        await rt.db[SESSIONS].delete_many({"expires_at": {"$lt": now}})
        await rt.db[SESSIONS].insert_one(
            {
                "_id": _digest(token),
                "key_id": key.key_id,
                "csrf": csrf,
                "created_at": now,
                "expires_at": now + timedelta(seconds=ttl),
            }
        )
    response.set_cookie(
        COOKIE, token, max_age=ttl, path=_PATH, httponly=True, samesite="strict", secure=secure
    )
    return Member(key.key_id, key.name, csrf)


async def end_session(rt: Runtime, request: Request, response: Response) -> None:
    cookie = request.cookies.get(COOKIE)
    if cookie:
        with backend_errors("ending the playground session failed"):
            await rt.db[SESSIONS].delete_one({"_id": _digest(cookie)})
    response.delete_cookie(COOKIE, path=_PATH, httponly=True, samesite="strict")


def session_info(member: Member) -> dict[str, Any]:
    return {"user": member.name, "key_id": member.key_id, "csrf": member.csrf}
