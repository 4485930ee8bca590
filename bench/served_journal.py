"""The served journal's cost: ``ServedExposure.add`` with the journal vs without, same input.

    $(./dev env)/bin/python bench/served_journal.py [--pages 20000] [--rounds 7]

In process, no servers (flushes are never due: ``exposure_flush_s`` 1 h): ``--pages`` pages of
20 member ids served through ``ServedExposure.add`` with a journal attached (an ``os.write``
of one JSON line per page) and without (the bare in-memory count), alternated per round.
Also timed: the flush's journal rotation of one period's parts (the ~400 distinct ids a
second of peak traffic serves, in parts of 100) and the adoption of a killed process's
journal of ``--pages`` pages by the next process. Medians over rounds; per-page µs.
Writes bench/results/served_journal.json and the ``served-journal`` section of
bench/README.md. No target: the answer path's budget is milliseconds (bench/api.py), this
shows the journal is microseconds of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from opendisco.signals import ServedExposure, ServedJournal

logging.getLogger("opendisco.signals").setLevel(logging.ERROR)  # the adoption's warning

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_readme import write_section  # noqa: E402  (bench/, beside this file)

PAGE = 20


def served(pages: list[list[str]], journal: bool) -> float:
    """µs per page of ``add``, with or without a journal."""
    exposure = ServedExposure(None, 3600.0)  # type: ignore[arg-type]  # never flushes
    root = Path(tempfile.mkdtemp())
    if journal:
        exposure.attach(*ServedJournal.open(root, 3600.0))
    t = time.perf_counter()
    for page in pages:
        exposure.add(page)
    took = time.perf_counter() - t
    if journal:
        assert exposure.journal is not None
        exposure.journal.close(remove=True)
    shutil.rmtree(root, ignore_errors=True)
    return took / len(pages) * 1e6


def rotation(parts: list[tuple[str, dict[str, int]]]) -> float:
    """ms for one rotation of ``parts`` (a flush's start)."""
    root = Path(tempfile.mkdtemp())
    journal, _ = ServedJournal.open(root, 3600.0)
    t = time.perf_counter()
    journal.rotate(parts)
    took = time.perf_counter() - t
    journal.close(remove=True)
    shutil.rmtree(root, ignore_errors=True)
    return took * 1e3


def adoption(pages: list[list[str]]) -> float:
    """ms for the next process to adopt a killed process's journal of ``pages``."""
    root = Path(tempfile.mkdtemp())
    dead, _ = ServedJournal.open(root, 3600.0)
    for page in pages:
        dead.served(page)
    dead.close(remove=False)  # its lock released, as a kill -9 does
    t = time.perf_counter()
    journal, adopted = ServedJournal.open(root, 3600.0)
    took = time.perf_counter() - t
    assert sum(adopted.counts.values()) == len(pages) * PAGE
    journal.close(remove=True)
    shutil.rmtree(root, ignore_errors=True)
    return took * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    ids = [f"profile-{i:06d}" for i in range(2_000)]
    pages = [[ids[(p * 7 + j * 13) % len(ids)] for j in range(PAGE)] for p in range(args.pages)]
    parts: list[tuple[str, dict[str, int]]] = [
        (f"{k:012x}.s", {i: 1 for i in ids[k * 100 : (k + 1) * 100]}) for k in range(4)
    ]
    load = [os.getloadavg()[0]]
    runs: dict[str, list[float]] = {"bare": [], "journal": [], "rotation": [], "adoption": []}
    for _ in range(args.rounds):
        runs["bare"].append(served(pages, journal=False))
        runs["journal"].append(served(pages, journal=True))
        runs["rotation"].append(rotation(parts))
        runs["adoption"].append(adoption(pages))
    load.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in runs.items()}
    extra = f"{med['journal'] / med['bare']:.2f}×, +{med['journal'] - med['bare']:.2f} µs"
    out: dict[str, Any] = {
        "pages": args.pages,
        "rounds": args.rounds,
        "ids_per_page": PAGE,
        "load": load,
        "median": med,
        "runs": runs,
    }
    (HERE / "results" / "served_journal.json").write_text(json.dumps(out, indent=1) + "\n")
    section = f"""<!-- served-journal -->
## served-journal

`python bench/served_journal.py --pages {args.pages} --rounds {args.rounds}` (in process, no
servers; load {load[0]:.1f} → {load[1]:.1f}): `ServedExposure.add` of pages of {PAGE} member ids
with the served journal (one `os.write` of a JSON line per page, no `fsync`) vs without it, on
the same pages, alternated per round; medians over rounds. No target: the answer's budget is
milliseconds (bench/api.py), the journal is microseconds of it.

| | per page |
|---|---|
| `add`, no journal (bare) | {med["bare"]:.2f} µs |
| `add`, journal | {med["journal"]:.2f} µs ({extra}) |
| a flush's rotation (4 parts of 100 ids) | {med["rotation"]:.3f} ms |
| adopting a killed process's {args.pages:,} pages | {med["adoption"]:.1f} ms |

Full figures in `bench/results/served_journal.json`.
<!-- /served-journal -->"""
    write_section("served-journal", section)
    print(section)


if __name__ == "__main__":
    main()
