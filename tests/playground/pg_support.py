"""Helpers shared by the playground tests (a uniquely named module: ``conftest`` is ambiguous
when several test folders are collected in one run)."""

from __future__ import annotations

from typing import Any

from opendisco import Settings, clients
from opendisco.api import revoke_key
from opendisco.eval._synthetic import _admits

__all__ = ["eligible_member", "h", "revoke"]


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def revoke(settings: Settings, key_id: str) -> None:
    with clients.mongo(settings) as mc:
        assert revoke_key(mc[settings.mongo_db], key_id)


def eligible_member(market: dict[str, Any], n: int = 0, *, admits_self: bool = False) -> str:
    """The ``n``-th member by the number of profiles eligible both ways (deterministic);
    ``admits_self``: only members whose own preferences admit themselves (their own profile
    is then kept off their answers by self-exclusion alone, not by their preferences)."""
    users, items = market["users"], market["items"]

    def eligible(u: dict[str, Any]) -> int:
        return sum(
            1
            for it in items.values()
            if it["owner_id"] != u["_id"] and _admits(u, it) and _admits(users[it["owner_id"]], u)
        )

    ranked = sorted(
        (u for u in users.values() if not admits_self or _admits(u, u)),
        key=lambda u: (-eligible(u), u["_id"]),
    )
    return str(ranked[n]["_id"])
