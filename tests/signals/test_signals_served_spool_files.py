"""The served-list spool's files: cut documents, its bound, and who adopts a dead process's
files (real child processes and SIGKILL; no servers: the store's side is in
``test_signals_served_spool.py``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import bson
import pytest

from opendisco.signals import ServedSpool, read_spooled
from opendisco.signals import _served_spool as spool_module


def _doc(i: int, pad: int = 0) -> dict[str, object]:
    return {"_id": f"r{i}", "at": datetime(2026, 12, 5, tzinfo=UTC), "ids": ["a"], "p": "x" * pad}


#: a child that spools ``T_N`` lists in ``T_ROOT``, prints its name, then waits to be killed
OWNER = """
import os, sys, time
from datetime import UTC, datetime
from pathlib import Path
from opendisco.signals import ServedSpool
spool = ServedSpool.open(Path(os.environ["T_ROOT"]), 1 << 20, 3600.0)
spool.spill([{"_id": f"{spool.name}/{i}", "at": datetime.now(UTC)}
             for i in range(int(os.environ["T_N"]))])
print(spool.name, flush=True)
time.sleep(600)
"""

#: a child that opens a spool in ``T_ROOT`` at ``T_AT`` and prints the files it adopted
ADOPTER = """
import json, os, time
from pathlib import Path
from opendisco.signals import ServedSpool
time.sleep(max(0.0, float(os.environ["T_AT"]) - time.time()))
spool = ServedSpool.open(Path(os.environ["T_ROOT"]), 1 << 20, 3600.0)
print(json.dumps([f.path.name for f in spool.seal()]), flush=True)
time.sleep(1.0)  # holding what it adopted while the others look
"""


def _owner(root: Path, n: int) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "T_ROOT": str(root), "T_N": str(n)}
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def test_a_document_cut_by_a_kill_is_skipped_and_the_others_kept() -> None:
    data = b"".join(bson.encode(_doc(i)) for i in range(3))
    cut = data + bson.encode(_doc(3))[:-7]
    docs, skipped = read_spooled(cut)
    assert [d["_id"] for d in docs] == ["r0", "r1", "r2"] and skipped == len(cut) - len(data)
    assert docs[0]["at"] == datetime(2026, 12, 5, tzinfo=UTC)
    assert read_spooled(b"\xff\xff\xff\x7f" + data) == ([], len(data) + 4)  # no document
    assert read_spooled(b"") == ([], 0)


def test_the_spool_is_bounded_and_written_back_a_file_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "FILE_BYTES", 3000)
    root = tmp_path / "spool"
    spool = ServedSpool.open(root, 10_000, 3600.0)
    assert 1000 < len(bson.encode(_doc(0, pad=990))) < 1100  # 10,000 bytes hold 9
    taken = [spool.spill([_doc(i, pad=990)]) for i in range(12)]
    assert taken == [1] * 9 + [0] * 3
    assert (spool.spooled, spool.dropped) == (9, 3)
    files = spool.seal()
    assert [len(list(spool.read(f))) for f in files] == [3, 3, 3]
    assert [d["_id"] for f in files for d in spool.read(f)] == [f"r{i}" for i in range(9)]
    spool.written(files[0])
    assert spool.spill([_doc(20, pad=990)]) == 1  # room again
    for f in spool.seal():
        spool.written(f)
    assert not spool.pending and spool.bytes == 0
    spool.close()
    assert not root.exists()  # nothing left: no file, no lock, no directory


def test_a_living_owners_files_are_never_adopted_a_killed_ones_are(tmp_path: Path) -> None:
    proc, name = _owner(tmp_path, 5)
    try:
        mine = ServedSpool.open(tmp_path, 1 << 20, 3600.0)
        assert mine.adopt() == 0 and mine.seal() == []
        _kill9(proc)
        assert mine.adopt() == 1
        (f,) = mine.seal()
        assert [d["_id"] for d in mine.read(f)] == [f"{name}/{i}" for i in range(5)]
        mine.written(f)
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"{mine.name}.lock"]
        mine.close()
    finally:
        if proc.poll() is None:
            _kill9(proc)


def test_processes_starting_together_adopt_each_file_once(tmp_path: Path) -> None:
    owners = [_owner(tmp_path, 2) for _ in range(4)]
    for proc, _ in owners:
        _kill9(proc)
    files = sorted(p.name for p in tmp_path.glob("*.bson"))
    assert len(files) == 4
    env = {**os.environ, "T_ROOT": str(tmp_path), "T_AT": str(time.time() + 2.0)}
    adopters = [
        subprocess.Popen(
            [sys.executable, "-c", ADOPTER], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    got = [json.loads(p.communicate(timeout=120)[0]) for p in adopters]
    adopted = [name for names in got for name in names]
    assert sorted(adopted) == files  # each once, none lost
    # the adopters were gone without writing back: the next one takes everything again
    last = ServedSpool.open(tmp_path, 1 << 20, 3600.0)
    assert sorted(f.path.name for f in last.seal()) == files


def test_files_older_than_the_retention_are_deleted_unread(tmp_path: Path) -> None:
    proc, name = _owner(tmp_path, 3)
    _kill9(proc)
    old = time.time() - 7200
    for p in tmp_path.iterdir():
        os.utime(p, (old, old))
    spool = ServedSpool.open(tmp_path, 1 << 20, 3600.0)
    assert spool.seal() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{spool.name}.lock"]
    assert name != spool.name


#: a child whose file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past it
#: is cut, then fails with EFBIG) cuts a spool's write mid-document, then is lifted (the room
#: an ENOSPC lacked freed); it prints what the spool took and what its files hold
CUT = """
import json, os, resource
from pathlib import Path
from opendisco.signals import ServedSpool
spool = ServedSpool.open(Path(os.environ["T_ROOT"]), 1 << 20, 3600.0)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, hard))
doc = lambda i: {"_id": f"r{i}", "p": "x" * 990}
taken = sum(spool.spill([doc(i)]) for i in range(12))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
taken += sum(spool.spill([doc(i)]) for i in range(12, 20))
files = spool.seal()
read = [d["_id"] for f in files for d in spool.read(f)]
print(json.dumps({"taken": taken, "read": read, "dropped": spool.dropped}), flush=True)
"""


def test_a_write_cut_by_a_full_disk_does_not_hide_the_lists_appended_after_it(
    tmp_path: Path,
) -> None:
    """A spool write cut part-way (a full disk, the file-size limit) left a partial document
    in the file, and the lists appended after it, once there was room again, were taken
    (counted spooled) but unreadable: the reader stops at the cut document. Now a cut file is
    sealed (the cut document its last, skipped) and the next lists start a new file."""
    env = {**os.environ, "T_ROOT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", CUT], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["dropped"] >= 1 and out["taken"] + out["dropped"] == 20
    assert len(out["read"]) == out["taken"]  # every list taken is read back
    assert {f"r{i}" for i in range(12, 20)} <= set(out["read"])


def test_an_expired_file_beside_fresh_ones_of_a_dead_owner_is_deleted_too(
    tmp_path: Path,
) -> None:
    """A killed owner left an expired file and a fresh one: the fresh one is adopted and
    written back, the expired one deleted unread. Before, only an owner whose files had all
    expired had them deleted: here the expired file was never adopted nor deleted, and once
    the fresh one was written back (its lock with it) no process ever looked at it again."""
    proc, name = _owner(tmp_path, 3)
    _kill9(proc)
    (old,) = tmp_path.glob(f"{name}-*.bson")
    shutil.copy(old, tmp_path / f"{name}-000002.bson")
    then = time.time() - 7200
    os.utime(old, (then, then))
    spool = ServedSpool.open(tmp_path, 1 << 20, 3600.0)
    (f,) = spool.seal()
    assert f.path.name == f"{name}-000002.bson"
    spool.written(f)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{spool.name}.lock"]
    spool.close()


def test_the_bound_counts_what_was_spooled_not_what_is_on_disk(tmp_path: Path) -> None:
    """The spool's directory removed under the process (a process starting creates it again):
    its sealed file is gone when written back. Before, ``bytes`` was lowered by the file's
    size on disk, so a file gone kept its bytes counted for good and the spool, full of
    nothing, dropped every later list; now by what it counted when it spooled them."""
    root = tmp_path / "spool"
    spool = ServedSpool.open(root, 10_000, 3600.0)
    assert [spool.spill([_doc(i, pad=990)]) for i in range(9)] == [1] * 9
    (f,) = spool.seal()
    shutil.rmtree(root)
    root.mkdir()
    spool.written(f)
    assert spool.bytes == 0
    assert [spool.spill([_doc(i, pad=990)]) for i in range(9, 18)] == [1] * 9


def test_an_unreadable_entry_is_skipped_and_a_file_written_back_twice_is_no_error(
    tmp_path: Path,
) -> None:
    """A dead owner's ``.bson`` entry that is a directory made ``read`` raise in the flusher
    on every pass (it ended each time); a second write-back of a file (a flusher started
    during a drain) raised in ``written``."""
    (tmp_path / "7-dead-000001.bson").mkdir()
    (tmp_path / "7-dead.lock").touch()
    spool = ServedSpool.open(tmp_path, 1 << 20, 3600.0)
    (f,) = spool.seal()
    assert list(spool.read(f)) == []
    spool.written(f)
    spool.written(f)
    assert not spool.pending and not (tmp_path / "7-dead.lock").exists()
    spool.close()
