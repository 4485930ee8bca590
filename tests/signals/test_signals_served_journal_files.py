"""The served journal's files under concurrent processes and faults, no servers
(``signals._served_journal``): processes starting, stopping and adopting at once in one
directory, a disk that fills, what a killed process left half made, and the file rules (a
live owner's journal is never taken, one older than the window is dropped, a cut last line is
skipped). The kill -9 of a process that served, on the real counters, is in
``test_signals_served_journal``."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from opendisco.signals import ServedJournal, adopted_mark, read_journal

#: a process starting: opens its journal in ``root`` when ``go`` exists (all start at once),
#: reports what it adopted and lives until ``done`` exists (its journal is nobody's orphan)
STARTING = """
import json, os, sys, time
from pathlib import Path
from opendisco.signals import ServedJournal

root, flags = Path(sys.argv[1]), Path(sys.argv[2])
(flags / f"ready-{os.getpid()}").touch()
while not (flags / "go").exists():
    pass
try:
    journal, adopted = ServedJournal.open(root, 3600.0)
    print(json.dumps({"counts": adopted.counts, "journals": adopted.journals}), flush=True)
except OSError as exc:
    print(json.dumps({"error": repr(exc)}), flush=True)
while not (flags / "done").exists():
    time.sleep(0.05)
"""


def test_processes_starting_at_once_adopt_each_orphan_once(tmp_path: Path) -> None:
    """Every orphan is adopted by exactly one of the processes started together (its counts
    once in all), and every one of them has its journal."""
    root, flags = tmp_path / "journal", tmp_path / "flags"
    root.mkdir()
    flags.mkdir()
    orphans = 6
    for k in range(orphans):
        (root / f"{k}-dead.jsonl").write_bytes(b'["a",["x%d","y"]]\n' % k)
        (root / f"{k}-dead.lock").touch()
    out = _started_at_once(root, flags, 6)
    assert [o for o in out if "error" in o] == []
    adopted = sum((Counter(o["counts"]) for o in out), Counter[str]())
    assert adopted == Counter({**{f"x{k}": 1 for k in range(orphans)}, "y": orphans})
    assert sum(o["journals"] for o in out) == orphans
    assert len(list(root.glob("*.jsonl"))) == len(out)  # the orphans' are gone


def _started_at_once(root: Path, flags: Path, n: int) -> list[dict[str, Any]]:
    """What ``n`` processes (:data:`STARTING`) opening their journals in ``root`` at the same
    moment adopted (or the error each got)."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", STARTING, str(root), str(flags)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(flags.glob("ready-*"))) < n:
            assert time.monotonic() < deadline, "children not ready"
            time.sleep(0.05)
        (flags / "go").touch()
        return [json.loads(c.stdout.readline()) for c in children]  # type: ignore[union-attr]
    finally:
        (flags / "done").touch()
        for c in children:
            c.wait(30)


def test_processes_starting_at_once_sweep_old_orphans_of_other_namespaces(
    tmp_path: Path,
) -> None:
    """Processes starting together each sweep the old orphans of the other namespaces: one
    that listed a directory another had just emptied and removed failed its start-up
    (``FileNotFoundError`` of the directory, or of a lock file another had deleted) and
    served without a journal — every one of them but the first, each time."""
    base, flags = tmp_path / "served-journal", tmp_path / "flags"
    root = base / "ns"
    flags.mkdir()
    past = time.time() - 7200
    for k in range(100):
        old = base / f"old-{k}"
        old.mkdir(parents=True)
        for f in (old / "1-dead.jsonl", old / "1-dead.lock"):
            f.write_bytes(b'["a",["q"]]\n')
            os.utime(f, (past, past))
    out = _started_at_once(root, flags, 4)
    assert [o for o in out if "error" in o] == []
    assert [p.name for p in base.iterdir()] == ["ns"]  # every old one swept


#: a process starting and stopping (all written) ``cycles`` times from when ``go`` exists;
#: prints the errors its starts got
CHURN = """
import json, logging, sys
from pathlib import Path
from opendisco.signals import ServedJournal

logging.disable(logging.WARNING)
root, flags, cycles = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
(flags / f"ready-{sys.argv[4]}").touch()
while not (flags / "go").exists():
    pass
errors = []
for _ in range(cycles):
    try:
        journal, _ = ServedJournal.open(root, 3600.0)
        journal.close(remove=True)  # the last one in the directory removes it
    except OSError as exc:
        errors.append(repr(exc))
print(json.dumps(errors), flush=True)
"""


def test_a_process_starting_as_the_last_other_one_stops_has_its_journal(
    tmp_path: Path,
) -> None:
    """A process stopping with everything written removes its journal, and the directory when
    that was the last one: a process starting there at that moment, between creating the
    directory and its lock in it, failed (``FileNotFoundError``) and served without a
    journal (about 1 start in 300 with 4 processes starting and stopping there)."""
    root, flags = tmp_path / "journal", tmp_path / "flags"
    flags.mkdir()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHURN, str(root), str(flags), "1000", str(k)],
            stdout=subprocess.PIPE,
        )
        for k in range(3)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(flags.glob("ready-*"))) < len(children):
            assert time.monotonic() < deadline, "children not ready"
            time.sleep(0.05)
        (flags / "go").touch()
        errors = [json.loads(c.stdout.readline()) for c in children]  # type: ignore[union-attr]
    finally:
        for c in children:
            c.wait(60)
    assert errors == [[], [], []]


#: a process whose disk fills: a page's line is cut (RLIMIT_FSIZE: the ``write`` takes part of
#: it, as a full disk does), then there is room again; lives until ``done`` exists
FULL = """
import json, resource, sys, time
from pathlib import Path
from opendisco.signals import ServedExposure, ServedJournal

root, flags = Path(sys.argv[1]), Path(sys.argv[2])
served = ServedExposure(None, 3600.0)
served.attach(*ServedJournal.open(root, 3600.0))
page = ["item-0", "item-1"]
served.add(page)
size = served.journal.path.stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, resource.RLIM_INFINITY))
served.add(page)  # its line cut after 10 bytes
cut = served.journal is None
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
served.add(page)
print(json.dumps({"dropped": cut, "pending": served.pending}), flush=True)
while not (flags / "done").exists():
    time.sleep(0.05)
"""


def test_a_journal_the_disk_cuts_is_dropped_and_not_adopted_while_its_owner_lives(
    tmp_path: Path,
) -> None:
    """A ``write`` the disk took in part (full) drops the journal at once, as a failed one
    does: before, the cut line stayed and the next page was appended to it (both unreadable,
    the process unaware). The answers go on (every page counted in memory). The journal
    dropped is deleted: its owner, alive, holds every impression in it and writes them; left
    with its lock released, a process started beside it counted them again."""
    root, flags = tmp_path / "journal", tmp_path / "flags"
    flags.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", FULL, str(root), str(flags)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line, child.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        out = json.loads(line)
        _, adopted = ServedJournal.open(root, 3600.0)  # started while the child lives
    finally:
        (flags / "done").touch()
        child.wait(30)
    assert out == {"dropped": True, "pending": {"item-0": 3, "item-1": 3}}
    assert adopted.impressions == 0
    assert b"served journal failed" in child.stderr.read()  # type: ignore[union-attr]


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


def test_a_lock_under_its_temporary_name_is_left_to_the_process_naming_it(
    tmp_path: Path,
) -> None:
    """A process starting creates its lock as ``.<name>.lock``, then locks it, then names it.
    One starting beside it that took the temporary lock in between (unlocked: "an orphan")
    deleted it, and the first one's naming failed: it served without a journal (8 processes
    started at once, one of them in 1 of 8 runs)."""
    tmp = tmp_path / ".1-starting.lock"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o600)  # created, not locked yet
    try:
        _, adopted = ServedJournal.open(tmp_path, 3600.0)
        assert adopted.journals == 0 and tmp.exists()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # not held by the other one
        os.replace(tmp, tmp_path / "1-starting.lock")
    finally:
        os.close(fd)


def test_what_a_killed_process_left_half_made_is_deleted(tmp_path: Path) -> None:
    """A rotation its owner was killed writing (``.<name>.jsonl``, never named: its journal
    holds everything) goes with the journal adopted, and a lock whose owner was killed before
    it named it with it once older than the window: before, both stayed for ever, and so did
    the directory."""
    dead, _ = ServedJournal.open(tmp_path, 3600.0)
    dead.served(["a"])
    (tmp_path / f".{dead.path.name}").write_bytes(b'["p","m1",{"a":1}]\n')
    dead.close(remove=False)  # killed
    stale = tmp_path / ".1-killed.lock"
    stale.touch()
    past = time.time() - 7200
    os.utime(stale, (past, past))
    live, adopted = ServedJournal.open(tmp_path, 3600.0)
    assert adopted.parts == [(adopted_mark(dead.lock_path.stem, 0), {"a": 1})]  # not m1
    live.close(remove=True)
    assert not tmp_path.exists()


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


def test_a_journal_adopted_twice_sends_the_same_parts_under_the_same_marks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An adopter killed after it wrote the orphan's parts to its own journal and before it
    deleted the orphan: the next adopter takes both, the orphan's pages under the same marks
    in each, so the counters (``once_per_mark``) take them once."""
    from opendisco.signals import _served_journal

    dead, _ = ServedJournal.open(tmp_path, 3600.0)
    dead.served(["a", "b"])
    dead.served(["a"])
    dead.close(remove=False)
    monkeypatch.setattr(_served_journal, "_remove", lambda lock_path: None)  # killed here
    first, adopted = ServedJournal.open(tmp_path, 3600.0)
    assert adopted.parts == [(adopted_mark(dead.lock_path.stem, 0), {"a": 2, "b": 1})]
    first.close(remove=False)
    monkeypatch.undo()
    _, again = ServedJournal.open(tmp_path, 3600.0)
    assert again.journals == 2
    assert {m for m, _ in again.parts} == {m for m, _ in adopted.parts}  # one mark, twice
