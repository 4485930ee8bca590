"""Versioned artefact files: ``<stem>-v<N><suffix>``, numbered upwards, never overwritten.

``opendisco tune`` writes ``params-v<N>.json`` and ``opendisco train ltr`` writes
``model-v<N>.txt`` (+ its ``model-v<N>.json`` report) the same way: the next number is the
highest existing one + 1, and the file is created with ``open(..., "x")``, so two concurrent
writers never take the same number and nothing is ever replaced.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["latest_version", "write_next_version"]


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
    out_dir: Path, stem: str, suffix: str, write: Callable[[IO[str], int], None]
) -> Path:
    """Create the next ``<stem>-v<N><suffix>`` and fill it with ``write(file, N)``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    while True:
        version = latest_version(out_dir, stem, suffix) + 1
        path = out_dir / f"{stem}-v{version}{suffix}"
        try:
            with path.open("x", encoding="utf-8") as fh:
                write(fh, version)
            return path
        except FileExistsError:  # a concurrent writer took this number
            continue
