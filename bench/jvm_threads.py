"""The engine's CPU by thread pool: which work of OpenSearch a benchmark side paid for.

``jcmd <pid> Thread.print`` (the JDK's diagnostic command, next to the engine's ``java``)
lists every JVM thread with the CPU time it has used (``cpu=…ms``). Two snapshots around a
block of load, summed by the pool a thread belongs to (``opensearch[node][search][T#3]`` →
``search``; the JIT's compiler threads → ``jit``; the garbage collector's → ``gc``; the VM
thread's safepoints → ``vm``), say where the engine's CPU went: the candidate queries
(``search``), the counter writes (``write``, ``get``, ``refresh``, ``merge``), the network
(``transport_worker``), the JIT. Process CPU
from ``/proc`` cannot tell these apart. Used by ``bench/api.py``; nothing in the package
depends on it. Without ``jcmd`` (or as another user than the engine's) it returns ``None``
and the benchmarks report the process total alone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

_THREAD = re.compile(r'^"([^"]+)".*?\bcpu=([\d.]+)ms', re.M)
_POOL = re.compile(r"\]\[([A-Za-z_\-]+)\]\[T#\d+\]")
#: what the JVM's own threads are reported as
_JVM = (("CompilerThread", "jit"), ("GC Thread", "gc"), ("G1 ", "gc"), ("VM Thread", "vm"))


def _jcmd(pid: int) -> str | None:
    try:
        java = Path(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None
    beside = java.with_name("jcmd")
    return str(beside) if beside.exists() else shutil.which("jcmd")


def pool_of(thread: str) -> str:
    """The pool a JVM thread's name belongs to (``other`` for the rest)."""
    m = _POOL.search(thread)
    if m:
        return m.group(1)
    for marker, pool in _JVM:
        if marker in thread:
            return pool
    return "other"


def parse(dump: str) -> dict[str, float]:
    """``{thread name: CPU ms}`` from a ``Thread.print`` dump."""
    return {m.group(1): float(m.group(2)) for m in _THREAD.finditer(dump)}


def thread_cpu_ms(pid: int, timeout_s: float = 10.0) -> dict[str, float] | None:
    """Every JVM thread's CPU ms so far, or ``None`` when ``jcmd`` cannot attach."""
    exe = _jcmd(pid)
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, str(pid), "Thread.print"], capture_output=True, text=True, timeout=timeout_s
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    threads = parse(out.stdout) if out.returncode == 0 else {}
    return threads or None


def by_pool(before: Mapping[str, float], after: Mapping[str, float]) -> Counter[str]:
    """CPU ms each pool used between two snapshots (threads started since count in full)."""
    used: Counter[str] = Counter()
    for thread, ms in after.items():
        used[pool_of(thread)] += max(0.0, ms - before.get(thread, 0.0))
    return used
