"""Pid files: a recorded process is recognised, a dead or reused pid is not; the ownership walk
survives files deleted under it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from opendisco.services import _process
from opendisco.services._process import chown_tree, read_pid, spawn, stop_pid


def test_spawn_read_stop(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "sleeper.pid"
    script = tmp_path / "sleeper"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    script.chmod(0o755)
    pid = spawn([str(script)], log_file=tmp_path / "log", pid_file=pid_file, env={}, cwd=tmp_path)
    assert read_pid(pid_file) == pid
    assert stop_pid(pid_file, grace=5)
    assert read_pid(pid_file) is None and not pid_file.exists()


def test_reused_pid_is_not_ours(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pid_file = tmp_path / "x.pid"
        pid_file.write_text(f"{other.pid} ferretdb\n")  # a live pid, but not that program
        assert read_pid(pid_file) is None
        pid_file.write_text(f"{other.pid}\n")  # old format: no name recorded
        assert read_pid(pid_file) == other.pid
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing an owner needs root")
def test_chown_tree_survives_files_deleted_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node restarted beside running ones walks their data while Lucene merges delete
    files: every entry still there gets the owner, a vanished one is skipped (``chown -R``
    exited 1 and failed the restart)."""
    root = tmp_path / "data"
    for d in ("a", "b/c"):
        (root / d).mkdir(parents=True)
        for i in range(20):
            (root / d / f"_{i}.cfs").write_text("x")
    real_walk = os.walk
    gone: list[Path] = []

    def walk_while_merging(top: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for dirpath, dirs, files in real_walk(top, *args, **kwargs):  # type: ignore[call-overload]
            if files:  # listed, then deleted before the walk reaches it (a merge)
                victim = Path(dirpath) / files[0]
                victim.unlink()
                gone.append(victim)
            yield dirpath, dirs, files

    monkeypatch.setattr(_process.os, "walk", walk_while_merging)
    uid = gid = 65534  # nobody
    changed = chown_tree(root, uid, gid)
    assert len(gone) == 2
    left = [p for p in root.rglob("*")] + [root]
    assert changed == len(left) == 1 + 3 + 2 * 19
    assert all((p.lstat().st_uid, p.lstat().st_gid) == (uid, gid) for p in left)
    assert chown_tree(root, uid, gid) == 0  # only entries with another owner are changed
    # a concurrent deleter instead of a scripted one: no error whatever the interleaving
    monkeypatch.setattr(_process.os, "walk", real_walk)
    files = sorted(root.rglob("*.cfs"))
    deleter = threading.Thread(target=lambda: [f.unlink(missing_ok=True) for f in files])
    deleter.start()
    chown_tree(root, 0, 0)
    deleter.join()
