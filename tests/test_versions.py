"""Versioned artefact files (params-v<N>.json, model-v<N>.txt): numbered upwards, complete or
absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import pytest

from opendisco._versions import latest_version, write_new, write_next_version


def test_a_write_that_fails_midway_leaves_no_version_file(tmp_path: Path) -> None:
    """A payload that does not serialise (or a full disk) failed after part of the file was
    written: the partial ``params-v1.json`` stayed, the next run skipped to v2 and serving
    could be pointed at the broken v1."""

    def broken(fh: IO[str], version: int) -> None:
        fh.write(f'{{"version": {version}, "template_params": ')
        json.dump({"w": object()}, fh)  # TypeError after the first bytes are out

    with pytest.raises(TypeError):
        write_next_version(tmp_path, "params", ".json", broken)
    assert list(tmp_path.iterdir()) == []  # no version file, no temporary left
    path = write_next_version(tmp_path, "params", ".json", lambda fh, v: json.dump({"v": v}, fh))
    assert path.name == "params-v1.json" and json.loads(path.read_text()) == {"v": 1}
    again = write_next_version(tmp_path, "params", ".json", lambda fh, v: json.dump({"v": v}, fh))
    assert again.name == "params-v2.json" and latest_version(tmp_path, "params", ".json") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params-v1.json", "params-v2.json"]


def test_a_companion_file_is_created_whole_and_never_replaced(tmp_path: Path) -> None:
    report = tmp_path / "model-v1.json"
    assert write_new(report, '{"version": 1}\n') == report
    assert report.read_text() == '{"version": 1}\n'
    with pytest.raises(FileExistsError):
        write_new(report, '{"version": 2}\n')
    assert report.read_text() == '{"version": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-v1.json"]  # no temporary left


def test_a_version_passes_the_companion_of_a_deleted_version(tmp_path: Path) -> None:
    """model-v1.txt deleted by hand, its report left: the next model is v2, not a v1 whose
    report cannot be written (FileExistsError after the whole training)."""
    write_new(tmp_path / "model-v1.json", "{}\n")
    path = write_next_version(tmp_path, "model", ".txt", lambda fh, _v: fh.write("m"), (".json",))
    assert path.name == "model-v2.txt"
    assert write_new(path.with_suffix(".json"), "{}\n").name == "model-v2.json"
