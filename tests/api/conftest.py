"""API fixtures: a small real api_catalogue, keys of every scope, the app served in-process,
and a TCP proxy in front of OpenSearch that can be paused (like SIGSTOP) or killed (like
kill -9) without touching the shared server."""

from __future__ import annotations

from typing import Any

import pytest
from api_support import write_catalogue

from opendisco import Settings
from opendisco.api import create_key, revoke_key


@pytest.fixture(scope="session")
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "api_rate_limit": 10_000.0,
            "api_rate_burst": 10_000.0,
            "api_key_cache_s": 0.0,
            "api_cursor_secret": "test-cursor-secret",
            # functional tests must not degrade because the shared 2-core machine is busy;
            # the resilience tests set their own short deadlines
            "api_deadline_ms": 5000,
        }
    )


@pytest.fixture(scope="session")
async def api_catalogue(settings: Settings, mongo_db: Any, os_client: Any) -> dict[str, Any]:
    """``N_ITEMS`` synthetic profiles + users in MongoDB, reindexed into the session alias."""
    return await write_catalogue(settings)


@pytest.fixture(scope="session")
def keys(mongo_db: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, scopes in {
        "read": ["read"],
        "write": ["write"],
        "admin": ["admin"],
        "revoked": ["read", "write", "admin"],
    }.items():
        out[name], doc = create_key(mongo_db, f"test-{name}", scopes)
        if name == "revoked":
            assert revoke_key(mongo_db, doc["_id"])
    return out
