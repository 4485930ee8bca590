"""Versioned artefact files: ``<stem>-v<N><suffix>``, numbered upwards, never overwritten.

``opendisco tune`` writes ``params-v<N>.json`` and ``opendisco train ltr`` writes
``model-v<N>.txt`` (+ its ``model-v<N>.json`` report) the same way: the next number is the
highest existing one + 1, and the complete file is hard-linked to that name (which fails when
it exists), so two concurrent writers never take the same number, nothing is ever replaced and
no version file is ever partial.

A write's temporary file (``.<name>-<random>.tmp`` beside it) is ``flock``ed by its writer
until the version is linked; one whose lock can be taken belongs to a writer that is gone
(kill -9: the kernel drops the lock with the process), and the next write into the directory
removes it.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["latest_version", "remove_abandoned", "write_new", "write_next_version"]

#: a write's temporary file (``tempfile.mkstemp``'s 8 random characters)
_TMP = re.compile(r"^\..+-[a-z0-9_]{8}\.tmp$")
#: a temporary file younger than this is never removed: its writer may not have locked it yet
FRESH_S = 10.0


def _pattern(stem: str, suffix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(stem)}-v(\d+){re.escape(suffix)}$")


def latest_version(out_dir: Path, stem: str, suffix: str) -> int:
    """The highest ``N`` of ``<stem>-v<N><suffix>`` in ``out_dir`` (0 when none)."""
    pat = _pattern(stem, suffix)
    best = 0
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            m = pat.match(path.name)
            if m:
                best = max(best, int(m.group(1)))
    return best


def write_next_version(
    out_dir: Path,
    stem: str,
    suffix: str,
    write: Callable[[IO[str], int], None],
    companions: tuple[str, ...] = (),
) -> Path:
    """Create the next ``<stem>-v<N><suffix>`` and fill it with ``write(file, N)``.
    ``companions``: the suffixes of files written beside each version (a model's ``.json``
    report): ``N`` also passes theirs, so a companion left by a version whose file was
    deleted is never in the way of the new one.

    The content goes to a temporary file first (flushed to disk), which is then linked to the
    versioned name: a version file is complete or absent — a write that fails or is killed
    midway (disk full, a value that does not serialise) leaves no partial ``<stem>-v<N>`` that
    serving would load, and takes no number."""
    out_dir.mkdir(parents=True, exist_ok=True)
    while True:
        version = max(latest_version(out_dir, stem, x) for x in (suffix, *companions)) + 1
        buf = io.StringIO()
        write(buf, version)  # a value that does not serialise fails here: no file, no number
        try:
            return write_new(out_dir / f"{stem}-v{version}{suffix}", buf.getvalue())
        except FileExistsError:  # a concurrent writer took this number
            continue


def write_new(path: Path, text: str) -> Path:
    """Create ``path`` (which must not exist: FileExistsError) with ``text``, complete or not at
    all: the text goes to a temporary file first (flushed to disk, locked while written), which
    is then hard-linked to ``path`` (never replacing it). Version files, and a version's
    companion (a model's report). What killed writers left in the directory goes first."""
    remove_abandoned(path.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # held until linked: the writer lives
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
            os.link(tmp, path)
        return path
    finally:
        tmp.unlink(missing_ok=True)


def remove_abandoned(out_dir: Path) -> list[Path]:
    """Remove the temporary files of writes into ``out_dir`` whose writer is gone (their lock
    can be taken; older than :data:`FRESH_S`). Returns those removed."""
    try:
        names = [n for n in os.listdir(out_dir) if _TMP.match(n)]
    except OSError:  # no directory yet: nothing left there
        return []
    gone = []
    for name in names:
        path = out_dir / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # removed meanwhile: its writer linked it, or another sweep
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime < FRESH_S:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: its writer lives
            continue
        else:
            path.unlink(missing_ok=True)
            gone.append(path)
        finally:
            os.close(fd)
    return gone
