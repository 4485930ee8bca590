"""Served impressions survive a kill -9 of the process that served them (served journal).

The process that serves is a real child process (``python -c``) that journals its pages,
writes to the real OpenSearch counters and is killed with SIGKILL by itself at the moment under
test; the process started after it adopts its journal and writes what it left. The counters
must then hold every impression once: the pages never flushed (before the journal, all lost),
and a part the engine applied whose "written" mark the killed process never journaled (sent
again with its mark: not counted twice). The journal's files under concurrent processes and
faults are in ``test_signals_served_journal_files``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from signals_support import empty_items

from opendisco import SearchBackendError, Settings, clients
from opendisco.signals import (
    ExposureStore,
    ServedExposure,
    ServedJournal,
    journal_dir,
)

#: the child: serve ``pages`` (journaled, never flushed on its own), optionally flush and die
#: right after the engine applied the first part, then SIGKILL itself
CHILD = """
import asyncio, json, os, signal, sys
from opendisco import SearchBackendError, Settings, clients
from opendisco.signals import ExposureStore, ServedExposure, ServedJournal

settings = Settings.model_validate_json(os.environ["T_SETTINGS"])
pages, mode = json.loads(os.environ["T_PAGES"]), os.environ["T_MODE"]

async def main():
    store = ExposureStore(clients.async_opensearch(settings), settings)
    served = ServedExposure(store, 3600.0, chunk=2)
    served.attach(*ServedJournal.for_settings(settings))
    for page in pages[:2]:
        served.add(page)
    if mode == "applied":  # the engine applied the first part; killed before journaling it
        served.journal.written = lambda mark: os.kill(os.getpid(), signal.SIGKILL)
        flush = asyncio.ensure_future(served.flush(pace=False))
        await asyncio.sleep(0)  # the flush replaced the journal and sent its first part
    for page in pages[2:]:  # served meanwhile
        served.add(page)
    if mode == "applied":
        await flush
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""

IDS = [f"jr-{i}" for i in range(5)]
PAGES = [IDS[:3], IDS[1:4], IDS[2:], IDS[:2]]


@pytest.fixture
async def journaled(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Settings, Any]]:
    """Settings of a namespace of its own with a state dir of its own, and its counters."""
    s = settings.model_copy(
        update={"index_alias": f"{settings.index_alias}jr{os.getpid()}", "state_dir": tmp_path}
    )
    os_client = clients.async_opensearch(s)
    items = await empty_items(os_client, s.index_alias)
    store = ExposureStore(os_client, s)
    await store.ensure()
    try:
        yield s, store
    finally:
        await os_client.indices.delete(index=[store.index, items], ignore_unavailable=True)
        await os_client.close()


def _killed_child(s: Settings, mode: str) -> None:
    env = {
        **os.environ,
        "T_SETTINGS": s.model_dump_json(),
        "T_PAGES": json.dumps(PAGES),
        "T_MODE": mode,
    }
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, timeout=120, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


@pytest.mark.parametrize("mode", ["unflushed", "applied"])
async def test_what_a_killed_process_served_is_counted_once_by_the_next(
    journaled: tuple[Settings, ExposureStore], mode: str
) -> None:
    s, store = journaled
    shown = Counter(i for page in PAGES for i in page)
    before = await store.counts(IDS)
    _killed_child(s, mode)
    applied = await store.counts(IDS)
    if mode == "applied":  # the first part of the first two pages is in the engine
        assert {i: applied[i] - before[i] for i in IDS[:2]} == {IDS[0]: 1, IDS[1]: 2}

    served = ServedExposure(store, 3600.0)
    served.attach(*ServedJournal.for_settings(s))
    # the orphan is the adopter's now, known before anything is written (the caps count it;
    # the part applied too: its mark is what keeps it from being counted twice)
    assert served.unwritten_total() == sum(shown.values())
    assert [p.name for p in journal_dir(s).glob("*.jsonl")] == [served.journal.path.name]
    await served.drain()
    after = await store.counts(IDS)
    assert {i: after[i] - before[i] for i in IDS} == dict(shown)  # every impression, once
    served.detach()
    assert not journal_dir(s).exists()  # all written: the journal and its directory are gone


async def test_a_process_killed_beside_a_living_one_is_adopted_by_it(
    journaled: tuple[Settings, ExposureStore],
) -> None:
    """Not only a restart adopts: a living process takes a dead neighbour's journal at its
    next flush period (``flush_forever`` calls ``adopt``), e.g. a worker killed beside it."""
    s, store = journaled
    living = ServedExposure(store, 3600.0)
    living.attach(*ServedJournal.for_settings(s))
    living.add(IDS[:1])
    before = await store.counts(IDS)
    _killed_child(s, "unflushed")
    living.adopt()
    shown = Counter(i for page in PAGES for i in page)
    assert living.unwritten_total() == sum(shown.values()) + 1
    await living.drain()
    after = await store.counts(IDS)
    assert {i: after[i] - before[i] for i in IDS} == dict(shown + Counter(IDS[:1]))
    assert [p.name for p in journal_dir(s).glob("*.lock")] == [living.journal.lock_path.name]
    living.detach()


async def test_parts_adopted_while_a_flush_fails_are_kept(tmp_path: Path) -> None:
    """A flush that fails puts its parts back for the next; the parts adopted while it was
    waiting on the engine stay too (they are only in memory and in the journal the next flush
    replaces). An in-memory stand-in for the counters: the logic, not the engine."""
    release = asyncio.Event()

    class Refusing:
        async def record(self, counts: Mapping[str, int], **_: Any) -> list[str]:
            await release.wait()
            raise SearchBackendError("refused")

    served = ServedExposure(Refusing(), 3600.0)  # type: ignore[arg-type]
    served.attach(*ServedJournal.open(tmp_path, 3600.0))
    served.add(["a"])
    flush = asyncio.ensure_future(served.flush(pace=False))
    await asyncio.sleep(0)  # the flush waits on the engine
    dead, _ = ServedJournal.open(tmp_path, 3600.0)
    dead.rotate([("m-dead", {"b": 2})])
    dead.close(remove=False)
    served.adopt()
    release.set()
    with pytest.raises(SearchBackendError):
        await flush
    assert sorted(c for _, part in served.retry for c in part) == ["a", "b"]
    assert ("m-dead", {"b": 2}) in served.retry  # with its mark
    assert served.unwritten_total() == 3


async def test_a_clean_shutdown_that_could_not_write_keeps_the_journal(
    journaled: tuple[Settings, ExposureStore],
) -> None:
    """What a shutdown could not write (the engine down) is left for the next process."""
    s, store = journaled
    first = ServedExposure(store, 3600.0)
    first.attach(*ServedJournal.for_settings(s))
    first.add(IDS[:2])
    first.detach()  # not written: kept, its lock released
    before = await store.counts(IDS)
    second = ServedExposure(store, 3600.0)
    second.attach(*ServedJournal.for_settings(s))
    assert [part for _, part in second.retry] == [dict.fromkeys(IDS[:2], 1)]
    await second.drain()
    after = await store.counts(IDS)
    assert {i: after[i] - before[i] for i in IDS[:2]} == dict.fromkeys(IDS[:2], 1)
    second.detach()
