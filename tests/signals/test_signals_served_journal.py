"""Served impressions survive a kill -9 of the process that served them (served journal).

The process that serves is a real child process (``python -c``) that journals its pages,
writes to the real OpenSearch counters and is killed with SIGKILL by itself at the moment under
test; the process started after it adopts its journal and writes what it left. The counters
must then hold every impression once: the pages never flushed (before the journal, all lost),
and a part the engine applied whose "written" mark the killed process never journaled (sent
again with its mark: not counted twice). The journal's file rules (a live owner's journal is
never taken, a journal older than the window is dropped, a cut last line is skipped) are
pure file tests beside them."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from opendisco import SearchBackendError, Settings, clients
from opendisco.signals import (
    ExposureStore,
    ServedExposure,
    ServedJournal,
    journal_dir,
    read_journal,
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
    store = ExposureStore(os_client, s)
    await store.ensure()
    try:
        yield s, store
    finally:
        await os_client.indices.delete(index=store.index, ignore_unavailable=True)
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
    assert dict(second.pending) == dict.fromkeys(IDS[:2], 1)
    await second.drain()
    after = await store.counts(IDS)
    assert {i: after[i] - before[i] for i in IDS[:2]} == dict.fromkeys(IDS[:2], 1)
    second.detach()


# --- the journal's files (no servers) ----------------------------------------------------


def test_a_live_owners_journal_is_never_taken(tmp_path: Path) -> None:
    live, _ = ServedJournal.open(tmp_path, 3600.0)
    live.served(["a", "b"])
    other, adopted = ServedJournal.open(tmp_path, 3600.0)
    assert adopted.impressions == 0 and live.path.exists()
    live.close(remove=False)  # its owner gone: the next one takes it
    third, adopted = ServedJournal.open(tmp_path, 3600.0)
    assert dict(adopted.counts) == {"a": 1, "b": 1} and not live.path.exists()
    assert sorted(p.name for p in tmp_path.glob("*.lock")) == sorted(
        [other.lock_path.name, third.lock_path.name]
    )


def test_a_lock_file_is_locked_before_it_has_its_name(tmp_path: Path) -> None:
    journal, _ = ServedJournal.open(tmp_path, 3600.0)
    fd = os.open(journal.lock_path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert not list(tmp_path.glob(".*"))  # no temporary name left


def test_a_journal_older_than_the_window_is_dropped_unread(tmp_path: Path) -> None:
    old, _ = ServedJournal.open(tmp_path, 3600.0)
    old.served(["a"])
    old.close(remove=False)
    past = time.time() - 7200
    os.utime(old.path, (past, past))
    _, adopted = ServedJournal.open(tmp_path, 3600.0)
    assert adopted.impressions == 0 and not old.path.exists()


def test_other_namespaces_old_orphans_are_swept(tmp_path: Path) -> None:
    old, _ = ServedJournal.open(tmp_path / "ns-a", 3600.0)
    old.served(["a"])
    old.close(remove=False)
    live, _ = ServedJournal.open(tmp_path / "ns-b", 3600.0)  # alive, however old
    past = time.time() - 7200
    for p in (old.path, old.lock_path, live.path, live.lock_path):
        os.utime(p, (past, past))
    ServedJournal.open(tmp_path / "ns-c", 3600.0)
    assert not (tmp_path / "ns-a").exists()
    assert live.path.exists() and live.lock_path.exists()


def test_the_parts_not_written_and_the_pages_after_them() -> None:
    lines = [
        b'["p","m1",{"a":2,"b":1}]\n',
        b'["p","m2",{"c":1}]\n',
        b'["p","m3",{"d":4}]\n',
        b'["d","m1"]\n',
        b'["p","m2",{"c":1,"e":1}]\n',  # the last record of a mark wins
        b'["a",["x","y","x"]]\n',
        b'["a",["z"',  # the kill cut the last line: skipped
    ]
    parts, counts = read_journal(lines)
    assert parts == [("m2", {"c": 1, "e": 1}), ("m3", {"d": 4})]
    assert counts == Counter({"x": 2, "y": 1})


def test_a_rotation_holds_everything_unwritten(tmp_path: Path) -> None:
    journal, _ = ServedJournal.open(tmp_path, 3600.0)
    journal.served(["a", "b"])
    journal.rotate([("m1", {"a": 1, "b": 1}), ("m2", {"c": 2})])
    journal.served(["d"])
    journal.written("m1")
    with journal.path.open("rb") as f:
        parts, counts = read_journal(f)
    assert parts == [("m2", {"c": 2})] and counts == Counter({"d": 1})
