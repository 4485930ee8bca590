"""Signals fixtures: a MongoDB database and a state directory of a test's own (the served-list
log's spool tests)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from opendisco import Settings, clients


@pytest.fixture
async def spooled(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Settings, Any]]:
    """Settings of a database of their own with a state dir of their own, and that database
    (dropped after)."""
    s = settings.model_copy(
        update={"mongo_db": f"{settings.mongo_db}spool{os.getpid()}", "state_dir": tmp_path}
    )
    direct = clients.mongo_async(s)
    try:
        yield s, direct[s.mongo_db]
    finally:
        await direct.drop_database(s.mongo_db)
        await direct.close()
