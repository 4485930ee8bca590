"""Who holds a lease or a claim, and whether that process is gone (it was killed, say -9).

A holder is ``{host, pid, started}``: ``host`` is the host name and the process-id namespace
(two containers with one host name have two namespaces, and a pid means something only in
its own), ``started`` the process's start time (``/proc/<pid>/stat``; ``None`` where there is
no ``/proc``), so a pid the kernel gave again to a new process is not taken for the old
holder; a killed process its parent has not reaped yet (a zombie) is gone. Only a holder of
this host and namespace can be known to be gone; of any other, :func:`holder_gone` says
nothing (``False``) and the lease's expiry decides. :func:`process_alive` is also what the
local servers' pid files are checked with (``services._process``).
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["held_until_over", "holder", "holder_gone", "process_alive"]


@functools.cache
def _host() -> str:
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}|{ns}"


def _stat(pid: int) -> tuple[bytes, int | None]:
    """The state and start time (clock ticks after boot) of process ``pid``, as far as
    ``/proc`` tells (``b""`` and ``None`` where it does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return b"", None
    # the command name (field 2) may hold spaces and parentheses: fields after its last ")"
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return fields[0], int(fields[19])  # fields 3 and 22 of the whole line
    except (IndexError, ValueError):
        return (fields[0] if fields else b""), None


def _started(pid: int) -> int | None:
    return _stat(pid)[1]


def holder(prefix: str = "") -> dict[str, Any]:
    """This process as a holder: the fields to store with a lease or a claim (``prefix``ed)."""
    me = {"host": _host(), "pid": os.getpid(), "started": _started(os.getpid())}
    return {f"{prefix}{k}": v for k, v in me.items()}


def process_alive(pid: Any) -> bool:
    """Whether process ``pid`` of this host runs (a non-integer pid never does; a zombie,
    killed and not yet reaped by its parent, does not)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _stat(pid)[0] not in (b"Z", b"X")


def holder_gone(host: Any, pid: Any, started: Any = None) -> bool:
    """Whether the holder ``(host, pid, started)`` is known to be gone: a process of this
    host and namespace that no longer runs (or whose pid now belongs to a newer process)."""
    if host != _host() or not isinstance(pid, int) or isinstance(pid, bool):
        return False
    if not process_alive(pid):
        return True
    now = _started(pid)
    if isinstance(started, int) and not isinstance(started, bool):
        return now is not None and now != started
    return False


def held_until_over(doc: Mapping[str, Any], now: datetime, prefix: str = "") -> bool:
    """Whether the lease or claim stored in ``doc`` (``<prefix>expires`` and the
    :func:`holder` fields) holds no more: it has no expiry or has expired, or its holder is
    known to be gone. A naive ``expires`` is UTC (as MongoDB returns it)."""
    expires = doc.get(f"{prefix}expires")
    if not isinstance(expires, datetime):
        return True
    if (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) <= now:
        return True
    return holder_gone(
        doc.get(f"{prefix}host"), doc.get(f"{prefix}pid"), doc.get(f"{prefix}started")
    )
