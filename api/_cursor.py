"""Opaque, signed pagination cursors carrying the ids a session has already been served.

``base64url(zlib(json)) + "." + base64url(hmac_sha256[:16])``; the payload binds the cursor to
its user and surface and carries an expiry, so pages of one session never repeat an item and a
cursor cannot be forged or replayed for another user.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from pymongo.errors import DuplicateKeyError

from opendisco._backend import backend_errors
from opendisco._exceptions import InvalidInput

__all__ = ["MAX_CURSOR_CHARS", "SECRETS", "CursorCodec", "shared_secret"]

#: generated secrets every API process of one deployment shares (``_id`` = purpose)
SECRETS = "api_secrets"
#: the longest cursor a request may carry (the ``cursor`` parameter's bound): a session whose
#: served ids do not fit in one ends as one that served ``max_ids`` (item ids may have 512
#: characters: 999 of 100 signed to 78,746, a cursor the next page was refused with). It
#: leaves 16 KiB of the server's 64 KiB request head (``BoundedHttpTools.max_head_bytes``) to
#: the path and the fields: at 65,536 the API issued cursors whose next page was a 431
MAX_CURSOR_CHARS = 48 * 1024


async def shared_secret(db: Any, configured: str | None) -> bytes:
    """The cursor signing secret: ``api_cursor_secret`` when set, else one generated once per
    database and kept in ``api_secrets`` (the first process to start inserts it — a unique
    ``_id`` insert is atomic on FerretDB too — and every other reads it), so a cursor signed by
    one worker or replica is valid on all of them."""
    if configured:
        return configured.encode()
    coll = db[SECRETS]
    with backend_errors("cursor secret lookup failed"):
        doc = await coll.find_one({"_id": "cursor"})
        if doc is None:
            # another process may win the race: then its secret is read back below
            with contextlib.suppress(DuplicateKeyError):
                await coll.insert_one({"_id": "cursor", "secret": secrets.token_hex(32)})
            doc = await coll.find_one({"_id": "cursor"})
    return bytes.fromhex(doc["secret"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    def __init__(
        self,
        secret: bytes,
        ttl_s: int = 3600,
        max_ids: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self.max_ids = max_ids
        self._clock = clock

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest()[:16])

    def encode(self, user_id: str, surface: str, served: Sequence[str]) -> str | None:
        """The next-page cursor, or None once the session has served ``max_ids`` items (or
        more than one cursor of :data:`MAX_CURSOR_CHARS` holds)."""
        if len(served) >= self.max_ids:
            return None
        payload = {
            "u": user_id,
            "s": surface,
            "ids": list(served),
            "exp": int(self._clock()) + self.ttl_s,
        }
        body = _b64(zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 6))
        cursor = f"{body}.{self._sign(body)}"
        return cursor if len(cursor) <= MAX_CURSOR_CHARS else None

    def decode(self, cursor: str, user_id: str, surface: str) -> list[str]:
        """Served ids of a cursor; :class:`InvalidInput` when forged, expired or foreign."""
        body, _, sig = cursor.partition(".")
        expected = self._sign(body).encode()
        if not body or not sig or not hmac.compare_digest(sig.encode(), expected):
            raise InvalidInput("invalid cursor")
        try:
            payload = json.loads(zlib.decompress(_unb64(body)))
        except (ValueError, zlib.error) as exc:
            raise InvalidInput("invalid cursor") from exc
        # signed, yet maybe not what this version writes (another version, same secret)
        exp, ids = (payload.get("exp"), payload.get("ids")) if isinstance(payload, dict) else (0, 0)
        if not isinstance(exp, int | float) or not isinstance(ids, list):
            raise InvalidInput("invalid cursor")
        if payload.get("u") != user_id or payload.get("s") != surface:
            raise InvalidInput("cursor belongs to another user or surface")
        if not exp >= self._clock():  # NaN too
            raise InvalidInput("cursor expired")
        return [str(i) for i in ids if isinstance(i, str)]
