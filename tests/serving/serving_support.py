"""Helpers shared by the serving tests (a module with a unique name: ``conftest`` is
ambiguous when several test folders are collected in one run)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

__all__ = ["event"]


def event(user: str, kind: str, item: str, **kw: Any) -> dict[str, Any]:
    """One event of ``user`` on ``item`` now, with a fresh id (``kw``: more fields)."""
    return {
        "id": uuid.uuid4().hex,
        "type": kind,
        "user_id": user,
        "item_id": item,
        "ts": datetime.now(UTC),
        **kw,
    }
