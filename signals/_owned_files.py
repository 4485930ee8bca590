"""Files a process owns under an ``flock`` for its life, that another process on the host
adopts once the owner is gone (the served journal, the served-list log's spool).

A process names its files ``<pid>-<random>`` in one directory and holds an exclusive
``flock`` on ``<name>.lock``. The lock file is locked under a temporary name
(``.<name>.lock``) and renamed once locked, so a lock file is never seen unlocked while its
owner lives, and one under its temporary name is never taken. A lock another process can take
belongs to a dead process (kill -9 included: the kernel drops the lock with the process).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import time
from pathlib import Path

__all__ = ["listed", "new_lock", "remove_stale", "take_lock", "temporary", "write_all"]


def new_lock(root: Path, attempts: int = 5) -> tuple[str, int]:
    """A new name in ``root`` (created when missing) and its lock, locked. The last process
    there that stops with everything written removes the directory: one starting at that
    moment, between creating it and its lock in it (once that exists, the directory is never
    empty), creates both again."""
    name = f"{os.getpid()}-{secrets.token_hex(6)}"
    tmp = root / f".{name}.lock"
    for attempt in range(attempts):
        try:  # mkdir: FileExistsError when it was created, then removed, as it checked
            root.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o600)
            break
        except (FileNotFoundError, FileExistsError):
            if attempt == attempts - 1:
                raise
    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(tmp, root / f"{name}.lock")  # named only once locked
    return name, lock_fd


def take_lock(lock_path: Path) -> int | None:
    """The lock of files whose owner is gone, taken (its descriptor); None when its owner
    lives or another process took and deleted it meanwhile."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_stale(tmp_lock: Path, max_age_s: float) -> None:
    """Delete a lock under its temporary name older than ``max_age_s``: its owner was killed
    before it named it (one starting names it at once), and owned nothing yet."""
    with contextlib.suppress(FileNotFoundError):
        if time.time() - tmp_lock.stat().st_mtime > max_age_s:
            tmp_lock.unlink()


def listed(directory: Path) -> list[Path]:
    """The entries of ``directory``; none when it is gone (emptied and removed by another
    process) or is not a directory."""
    try:
        return sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` or raise ``OSError``: a ``write`` a full disk cuts returns what it
    took without an error, and the next record appended to the cut one made both unreadable
    (the process writing on, unaware)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:
            raise OSError(errno.ENOSPC, "nothing written (disk full?)")
        view = view[n:]


def temporary(path: Path) -> bool:
    """A file under its temporary name (``.<name>``): a lock its owner, starting, has not
    locked yet, or a file being written before it is renamed. Never an orphan's."""
    return path.name.startswith(".")
