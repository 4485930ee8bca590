"""Versioned artefact files (params-v<N>.json, model-v<N>.txt): numbered upwards, complete or
absent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from opendisco._versions import FRESH_S, latest_version, write_new, write_next_version


def test_a_write_that_fails_midway_leaves_no_version_file(tmp_path: Path) -> None:
    """A payload that does not serialise (or a full disk) failed after part of the file was
    written: the partial ``params-v1.json`` stayed, the next run skipped to v2 and serving
    could be pointed at the broken v1."""

    def broken(fh: IO[str], version: int) -> None:
        fh.write(f'{{"version": {version}, "template_params": ')
        json.dump({"w": object()}, fh)  # TypeError after the first bytes are out

    with pytest.raises(TypeError):
        write_next_version(tmp_path, "params", ".json", broken)
    assert list(tmp_path.iterdir()) == []  # no version file, no temporary left
    path = write_next_version(tmp_path, "params", ".json", lambda fh, v: json.dump({"v": v}, fh))
    assert path.name == "params-v1.json" and json.loads(path.read_text()) == {"v": 1}
    again = write_next_version(tmp_path, "params", ".json", lambda fh, v: json.dump({"v": v}, fh))
    assert again.name == "params-v2.json" and latest_version(tmp_path, "params", ".json") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params-v1.json", "params-v2.json"]


def test_a_companion_file_is_created_whole_and_never_replaced(tmp_path: Path) -> None:
    report = tmp_path / "model-v1.json"
    assert write_new(report, '{"version": 1}\n') == report
    assert report.read_text() == '{"version": 1}\n'
    with pytest.raises(FileExistsError):
        write_new(report, '{"version": 2}\n')
    assert report.read_text() == '{"version": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-v1.json"]  # no temporary left


def test_a_version_passes_the_companion_of_a_deleted_version(tmp_path: Path) -> None:
    """model-v1.txt deleted by hand, its report left: the next model is v2, not a v1 whose
    report cannot be written (FileExistsError after the whole training)."""
    write_new(tmp_path / "model-v1.json", "{}\n")
    path = write_next_version(tmp_path, "model", ".txt", lambda fh, _v: fh.write("m"), (".json",))
    assert path.name == "model-v2.txt"
    assert write_new(path.with_suffix(".json"), "{}\n").name == "model-v2.json"


_HELD_WRITER = """
import os, sys, time
from pathlib import Path
from opendisco import _versions
out, go = Path(sys.argv[1]), Path(sys.argv[2])
def held(fd):  # the write stops here: its temporary file written, not yet linked
    while not go.exists():
        time.sleep(0.01)
os.fsync = held
_versions.write_next_version(out, "model", ".txt", lambda fh, v: fh.write("trees"))
"""


def _temporaries(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.suffix == ".tmp"}


def _held_writer(out: Path, go: Path, waiting: int) -> subprocess.Popen[bytes]:
    """A process writing the next version into ``out``, held before its link until ``go``
    exists; returns once its temporary file is there (``waiting`` of them in all)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HELD_WRITER, str(out), str(go)], stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 20
    while len(_temporaries(out)) < waiting:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


def test_the_temporary_file_of_a_killed_write_is_removed_by_the_next_one(tmp_path: Path) -> None:
    killed = _held_writer(tmp_path, tmp_path / "never", 1)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    (left,) = _temporaries(tmp_path)
    live = _held_writer(tmp_path, tmp_path / "go", 2)
    try:
        old = time.time() - 2 * FRESH_S  # (a temporary file this young is never removed)
        for name in _temporaries(tmp_path):
            os.utime(tmp_path / name, (old, old))
        path = write_next_version(tmp_path, "model", ".txt", lambda fh, _v: fh.write("x"))
        assert path.name == "model-v1.txt"
        assert left not in _temporaries(tmp_path)  # the killed write's: removed
        assert len(_temporaries(tmp_path)) == 1  # the live write's: kept (it holds its lock)
        (tmp_path / "go").touch()
        assert live.wait(timeout=20) == 0, live.communicate()[1].decode()[-2000:]
    finally:
        live.kill()
        live.communicate()
    assert (tmp_path / "model-v2.txt").read_text() == "trees"
    assert _temporaries(tmp_path) == set()
