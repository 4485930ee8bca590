"""``opendisco apikeys create|list|revoke``: the key is printed once and works until revoked."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from opendisco import AuthError, Settings
from opendisco.api import ApiKeyStore
from opendisco.cli.main import cli


async def test_apikeys_create_list_revoke(settings: Settings, mongo_db: Any, async_db: Any) -> None:
    runner = CliRunner()
    res = runner.invoke(
        cli,
        ["apikeys", "create", "--name", "cli-test", "--scope", "read", "--scope", "write"],
        obj=settings,
    )
    assert res.exit_code == 0, res.output
    key = res.stdout.strip().splitlines()[-1]
    key_id = key.split("_")[1]
    assert key.startswith("odk_")
    stored = mongo_db["api_keys"].find_one({"_id": key_id})
    assert stored["scopes"] == ["read", "write"] and key.split("_", 2)[2] not in str(stored)

    store = ApiKeyStore(async_db, cache_s=0)
    assert (await store.authenticate(key)).scopes == {"read", "write"}

    listed = runner.invoke(cli, ["apikeys", "list"], obj=settings)
    assert listed.exit_code == 0 and key_id in listed.output and "cli-test" in listed.output
    assert key.split("_", 2)[2] not in listed.output

    assert runner.invoke(cli, ["apikeys", "revoke", key_id], obj=settings).exit_code == 0
    with pytest.raises(AuthError, match="revoked"):
        await store.authenticate(key)
    again = runner.invoke(cli, ["apikeys", "revoke", key_id], obj=settings)
    assert again.exit_code != 0
    bad = runner.invoke(cli, ["apikeys", "create", "--name", "x", "--scope", "root"], obj=settings)
    assert bad.exit_code != 0
