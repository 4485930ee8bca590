"""An exposure cap holds across a kill -9 of the API process, on the real servers.

``opendisco serve`` runs as a child process; served impressions are flushed only every hour
(``exposure_flush_s``), so everything it served is still unwritten when it is killed with
SIGKILL. A process started after it in the same state directory adopts its served journal
(``signals._served_journal``) before it answers: members asking it are not shown an item the
killed process already showed up to its cap. (Before the journal, the killed process's
impressions were lost: the new process showed the item its cap over again.)"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import free_port, start_serve, stop_serve
from test_api_caps import _profile, _shown
from test_api_safety import namespaced

from opendisco import Settings
from opendisco.api import create_key
from opendisco.signals import journal_dir

CAP = 3
COUNTED = 1  # impressions in the counters before: room for two more
MEMBERS = 8
CAPPED = "cap-kill"


@pytest.fixture(scope="module")
def kill_settings(api_settings: Settings) -> Settings:
    return namespaced(api_settings, "capkill")


@pytest.fixture(scope="module")
async def kill_catalogue(kill_settings: Settings, model: Any) -> dict[str, Any]:
    from opendisco import clients
    from opendisco.ingest import Embedder, write_sample
    from opendisco.ingest._reindex import reindex
    from opendisco.signals import ExposureStore

    items = [_profile(CAPPED, "g-kill", 1000.0, exposure_cap=CAP)]
    items += [_profile(f"fill-kill{i}", "g-kill", 10.0 + i) for i in range(3)]
    users = [
        {"_id": f"kill{i}", "gender": "g-kill", "age": 30, "pref_genders": ["g-kill"]}
        for i in range(MEMBERS)
    ]
    write_sample(kill_settings, items, users)
    await reindex(kill_settings, embedder=Embedder(kill_settings, model=model))
    os_client = clients.async_opensearch(kill_settings)
    try:
        store = ExposureStore(os_client, kill_settings)
        await store.ensure()
        assert CAPPED not in await store.record({CAPPED: COUNTED})
    finally:
        await os_client.close()
    with clients.mongo(kill_settings) as sync:
        key = create_key(sync[kill_settings.mongo_db], "capkill", ["read"])[0]
    return {"key": key}


class Server:
    """``opendisco serve`` (one process) of ``settings`` in ``state``, started and killed."""

    def __init__(self, settings: Settings, state: Path) -> None:
        self.port = free_port()
        self.state = state
        self.env = {
            **os.environ,
            "OPENDISCO_INDEX_ALIAS": settings.index_alias,
            "OPENDISCO_MONGO_DB": settings.mongo_db,
            "OPENDISCO_STATE_DIR": str(state),
            "OPENDISCO_API_DEADLINE_MS": "5000",
            "OPENDISCO_EXPLORE_RATE": "0",
            "OPENDISCO_EXPOSURE_FLUSH_S": "3600",
        }
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_serve(self.env, self.port, self.state / f"serve-{time.time_ns()}.log")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no shutdown, no drain
        assert self.proc.wait(30) == -9

    def stop(self) -> None:
        if self.proc is not None:
            stop_serve(self.proc)


@pytest.fixture
def server(kill_settings: Settings, tmp_path: Path) -> Iterator[Server]:
    srv = Server(kill_settings, tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


async def _members_shown(srv: Server, key: str, members: range) -> list[bool]:
    async with httpx.AsyncClient(base_url=srv.base, timeout=30) as client:
        return [await _shown(client, key, f"kill{i}", CAPPED) for i in members]


async def test_a_cap_holds_across_a_kill_9_of_the_api_process(
    server: Server, kill_settings: Settings, kill_catalogue: dict[str, Any]
) -> None:
    key = kill_catalogue["key"]
    server.start()
    half = MEMBERS // 2
    first = await _members_shown(server, key, range(half))
    assert first[: CAP - COUNTED] == [True] * (CAP - COUNTED) and sum(first) == CAP - COUNTED
    server.kill9()
    journal = journal_dir(kill_settings.model_copy(update={"state_dir": server.state}))
    assert list(journal.glob("*.jsonl")), "the killed process left no journal"

    server.start()  # the same state directory: adopts the journal before it answers
    again = await _members_shown(server, key, range(half, MEMBERS))
    assert not any(again), again  # the killed process's impressions still count
