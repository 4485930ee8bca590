"""Versioned artefact files: ``<stem>-v<N><suffix>``, numbered upwards, never overwritten.

``opendisco tune`` writes ``params-v<N>.json`` and ``opendisco train ltr`` writes
``model-v<N>.txt`` (+ its ``model-v<N>.json`` report) the same way: the next number is the
highest existing one + 1, and the complete file is hard-linked to that name (which fails when
it exists), so two concurrent writers never take the same number, nothing is ever replaced and
no version file is ever partial.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["latest_version", "write_new", "write_next_version"]


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
    all: the text goes to a temporary file first (flushed to disk), which is then hard-linked to
    ``path`` (never replacing it). Version files, and a version's companion (a model's report)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)
        return path
    finally:
        tmp.unlink(missing_ok=True)
