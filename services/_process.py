"""Process plumbing for locally run servers: spawn detached, pid files, stop, log tails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from opendisco._exceptions import ServiceError, ServiceTimeout
from opendisco._holder import process_alive as alive

__all__ = [
    "alive",
    "chown_tree",
    "cmdline",
    "read_pid",
    "spawn",
    "stop_pid",
    "tail",
    "wait_until",
]


def chown_tree(root: Path, uid: int, gid: int) -> int:
    """``chown -R uid:gid root`` that tolerates entries vanishing during the walk: restarting
    one node of a running cluster walks the data of the nodes still running, whose Lucene
    merges delete files meanwhile (``chown -R`` then exits 1 and the restart failed). Only
    entries with another owner are changed; symlinks themselves, never their targets.
    Returns how many entries were changed."""
    changed = 0
    for dirpath, _dirs, files in os.walk(root):  # a directory gone before its listing: skipped
        for path in (dirpath, *(os.path.join(dirpath, f) for f in files)):
            try:
                st = os.lstat(path)
                if st.st_uid != uid or st.st_gid != gid:
                    os.lchown(path, uid, gid)
                    changed += 1
            except FileNotFoundError:
                continue
    return changed


def read_pid(pid_file: Path) -> int | None:
    """The live process recorded in ``pid_file``; None when it is gone or the pid was reused
    by another program (after a reboot, say): a pid file also records the command's name."""
    try:
        pid_text, *rest = pid_file.read_text().split()
        pid = int(pid_text)
    except (FileNotFoundError, ValueError):
        return None
    if not alive(pid):
        return None
    if rest and rest[0] not in " ".join(cmdline(pid)):
        return None
    return pid


def cmdline(pid: int) -> list[str]:
    """The arguments ``pid`` was started with (``/proc``); empty when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def spawn(
    argv: Sequence[str], *, log_file: Path, pid_file: Path, env: dict[str, str], cwd: Path
) -> int:
    """Start ``argv`` in its own session, detached from us, output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServiceError(f"cannot start {argv[0]}: {exc}") from exc
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    program = next((a for a in argv if "/" in a), argv[0])  # past wrappers such as setpriv
    pid_file.write_text(f"{proc.pid} {Path(program).name}\n")
    return proc.pid


def stop_pid(pid_file: Path, *, grace: float = 30.0) -> bool:
    """SIGTERM the process group, escalate to SIGKILL after ``grace``; True if one was running."""
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(pid):
            _reap(pid)
            time.sleep(0.2)
        if not alive(pid):
            break
    if alive(pid):
        raise ServiceError(f"process {pid} survived SIGKILL")
    pid_file.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-64_000:]
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def wait_until(
    ready: Callable[[], bool],
    *,
    name: str,
    timeout: float,
    pid: int | None,
    log_file: Path,
) -> None:
    """Poll ``ready`` until true; raise :class:`ServiceTimeout` with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if pid is not None and not alive(pid):
            _reap(pid)
            raise ServiceError(
                f"{name} exited during startup; last lines of {log_file}:\n{tail(log_file)}"
            )
        time.sleep(0.5)
    raise ServiceTimeout(
        f"{name} not healthy after {timeout:.0f}s; last lines of {log_file}:\n{tail(log_file)}"
    )
