"""Pid files: a recorded process is recognised, a dead or reused pid is not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from opendisco.services._process import read_pid, spawn, stop_pid


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
