"""``./dev``: two checkouts on one machine each import their own code (shared dependencies)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dev_env(checkout: Path) -> Path:
    out = subprocess.run(
        [str(checkout / "dev"), "env"], capture_output=True, text=True, timeout=300, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _imported_from(venv: Path) -> Path:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import opendisco; print(opendisco.__file__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd="/",
    )
    return Path(out.stdout.strip()).resolve()


def test_a_second_checkout_does_not_repoint_the_first(tmp_path: Path) -> None:
    clone = tmp_path / "second"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    mine, theirs = _dev_env(ROOT), _dev_env(clone)
    try:
        assert mine != theirs
        assert _imported_from(theirs).is_relative_to(clone.resolve())
        # building the second checkout's environment left the first one's import alone
        assert _imported_from(mine).is_relative_to(ROOT)
        # and both reach the same shared dependencies (no second ~4 GB install)
        probe = "import numpy, os; print(os.path.realpath(numpy.__file__))"
        paths = {
            subprocess.run(
                [str(v / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True
            ).stdout
            for v in (mine, theirs)
        }
        assert len(paths) == 1
    finally:
        if theirs.is_dir() and os.access(theirs, os.W_OK):
            shutil.rmtree(theirs, ignore_errors=True)


def test_a_fresh_clone_at_a_path_used_before_imports_its_own_code(tmp_path: Path) -> None:
    """The editable install is a tree of links inside the checkout (``build/``): a clone
    deleted and made again at the same path (a CI workspace) found its overlay marked ready
    and imported nothing (``ModuleNotFoundError: opendisco``)."""
    clone = tmp_path / "again"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    venv = _dev_env(clone)
    try:
        assert _imported_from(venv).is_relative_to(clone.resolve())
        shutil.rmtree(clone)
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
        assert _dev_env(clone) == venv
        assert _imported_from(venv).is_relative_to(clone.resolve())
    finally:
        if venv.is_dir() and os.access(venv, os.W_OK):
            shutil.rmtree(venv, ignore_errors=True)
