"""Helpers shared by the playground tests (a uniquely named module: ``conftest`` is ambiguous
when several test folders are collected in one run)."""

from __future__ import annotations

from opendisco import Settings, clients
from opendisco.api import revoke_key

__all__ = ["h", "revoke"]


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def revoke(settings: Settings, key_id: str) -> None:
    with clients.mongo(settings) as mc:
        assert revoke_key(mc[settings.mongo_db], key_id)
