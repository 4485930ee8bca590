"""A local journal of served impressions not yet counted, so a kill -9 does not lose them.

:class:`~opendisco.signals.ServedExposure` counts served impressions in memory and writes them
to the exposure counters at most every ``exposure_flush_s``. Before this journal, a process
killed between two flushes lost its last period's counts: nobody ever counted them, so an item
could be served past its cap for the rest of its window (the hard rule's "capped").

Each API process appends to a file of its own, ``<dir>/<name>.jsonl``, one JSON line per
record (``os.write`` on an ``O_APPEND`` descriptor: the kernel holds what was written when the
process dies, no ``fsync`` — a power cut can lose the last writes, a kill -9 cannot):

* ``["a", [ids]]`` — a page served (every id one impression), written before it is answered;
* ``["p", mark, {id: n}]`` — a part a flush sends (with the mark its counters keep:
  ``_counting.once_per_mark``), possibly applied already;
* ``["d", mark]`` — that part written.

A flush starts by replacing the file (``os.replace`` of a new file holding one ``p`` record per
part it will send, including the parts kept from failed flushes): everything unwritten at that
moment is in those parts, so the file never grows past one flush period's pages.

**Who reads a journal.** A process holds an exclusive ``flock`` on ``<name>.lock`` for its
life (the file is locked before it gets its name, so a lock file is never seen unlocked while
its owner lives; one under its temporary name, ``.<name>.lock``, is never taken). A process
takes every lock it can get in its directory (one directory per counters index) when it
starts and then every flush period (``ServedExposure.flush_forever``: a worker killed beside
living ones is adopted by them, not only by its restart): those journals' owners are gone.
Their parts not marked ``d`` come back with their marks, their pages as parts whose marks are
derived from the orphan's name (``adopted_mark``); a part applied whose answer was lost is
ignored by the counters that kept its mark, i.e. counted once. The adopter writes them to its
own journal before it deletes the orphan's: a kill -9 between the two leaves both for the next
adopter, the same parts under the same marks in each, so they are counted once too.
Journals older than one exposure window are deleted unread (their impressions count toward
no cap any more). A clean shutdown that wrote everything removes its journal.

Not covered: a host that is gone with its disk (another host's process cannot read it), and a
directory that cannot be written (the process then serves without a journal and says so; a
journal whose write fails later, a full disk, is deleted and the process goes on without one:
alive, it holds what the journal held).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from opendisco._settings import Settings

from ._exposure import exposure_index
from ._owned_files import listed, new_lock, remove_stale, take_lock, temporary, write_all

__all__ = [
    "ADOPTED_PART",
    "Adopted",
    "ServedJournal",
    "adopted_mark",
    "journal_dir",
    "pages_as_parts",
    "read_journal",
]

#: ids per part of an orphan's pages (the flush's own parts: ``exposure_flush_chunk``, 100)
ADOPTED_PART = 100

log = logging.getLogger("opendisco.signals")


@dataclass
class Adopted:
    """What dead processes' journals left unwritten: parts to send, each with its mark (their
    own, or one derived from the orphan's name for its pages never sent)."""

    parts: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    journals: int = 0

    @property
    def counts(self) -> Counter[str]:
        """Impressions per id, over every part."""
        out: Counter[str] = Counter()
        for _, part in self.parts:
            out.update(part)
        return out

    @property
    def impressions(self) -> int:
        return sum(sum(c.values()) for _, c in self.parts)


def adopted_mark(orphan: str, k: int) -> str:
    """Pure: the mark of the ``k``-th part of an orphan's pages (sorted ids in parts of
    :data:`ADOPTED_PART` ids): the same whoever adopts it, so a journal adopted twice (its
    adopter killed before it deleted it) sends the same parts under the same marks."""
    return hashlib.sha256(f"{orphan}/{k}".encode()).hexdigest()[:12] + ".s"


def pages_as_parts(orphan: str, counts: Mapping[str, int]) -> list[tuple[str, dict[str, int]]]:
    """Pure: an orphan's pages (counts) as marked parts (:func:`adopted_mark`)."""
    ids = sorted(i for i, n in counts.items() if n > 0)
    return [
        (adopted_mark(orphan, k), {i: counts[i] for i in ids[at : at + ADOPTED_PART]})
        for k, at in enumerate(range(0, len(ids), ADOPTED_PART))
    ]


def read_journal(lines: Iterable[bytes]) -> tuple[list[tuple[str, dict[str, int]]], Counter[str]]:
    """The parts of a journal not marked written (each with its mark; the last ``p`` of a mark
    wins) and the pages served after its last rotation, as counts. A line the process did not
    finish writing (the last one, cut by the kill) is skipped."""
    parts: dict[str, dict[str, int]] = {}
    done: set[str] = set()
    counts: Counter[str] = Counter()
    for raw in lines:
        try:
            rec = json.loads(raw)
            kind = rec[0]
            if kind == "a":
                counts.update(str(i) for i in rec[1])
            elif kind == "p":
                parts[str(rec[1])] = {str(i): int(n) for i, n in rec[2].items()}
            elif kind == "d":
                done.add(str(rec[1]))
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):
            log.warning("served journal: a line skipped (%d bytes)", len(raw))
    return [(m, c) for m, c in parts.items() if m not in done and c], counts


def journal_dir(settings: Settings) -> Path:
    """Where the API's processes of one counters index (namespace) journal on this host."""
    return settings.state_dir / "served-journal" / exposure_index(settings)


class ServedJournal:
    """One process's journal (see the module docstring). :meth:`open` adopts the orphans."""

    def __init__(self, root: Path, name: str, lock_fd: int, max_age_s: float) -> None:
        self.root = root
        #: journals last written longer ago are dropped unread (one exposure window)
        self.max_age_s = max_age_s
        self.path = root / f"{name}.jsonl"
        self.lock_path = root / f"{name}.lock"
        self._lock_fd = lock_fd
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @classmethod
    def open(cls, root: Path, max_age_s: float) -> tuple[ServedJournal, Adopted]:
        """A new journal in ``root`` and what the dead processes' journals there left (now in
        the new journal, theirs deleted). Raises ``OSError`` when ``root`` cannot be written."""
        name, lock_fd = new_lock(root)
        journal = cls(root, name, lock_fd, max_age_s)
        _sweep_siblings(root, max_age_s)
        return journal, journal.adopt()

    @classmethod
    def for_settings(cls, settings: Settings) -> tuple[ServedJournal, Adopted]:
        """:meth:`open` in :func:`journal_dir`; journals older than one exposure window go."""
        return cls.open(journal_dir(settings), settings.exposure_window_hours * 3600)

    def adopt(self) -> Adopted:
        """Take the journals in this directory whose owners are gone: what they left unwritten
        is appended to this journal (as parts, each with its mark), then theirs are deleted."""
        adopted, orphans = self._take_orphans()
        for mark, counts in adopted.parts:
            self._append(["p", mark, counts])
        for lock_path, fd in orphans:  # ours hold their parts now
            _remove(lock_path)
            os.close(fd)
        if adopted.journals:
            log.warning(
                "served journal: %d impressions of %d stopped processes adopted (%s)",
                adopted.impressions,
                adopted.journals,
                self.root,
            )
        return adopted

    def _take_orphans(self) -> tuple[Adopted, list[tuple[Path, int]]]:
        """Lock every journal whose owner is gone and read it (too old: read nothing)."""
        adopted = Adopted()
        taken: list[tuple[Path, int]] = []
        for lock_path in sorted(self.root.glob("*.lock")):
            if temporary(lock_path):
                remove_stale(lock_path, self.max_age_s)
                continue
            if lock_path == self.lock_path or (fd := take_lock(lock_path)) is None:
                continue
            taken.append((lock_path, fd))
            path = lock_path.with_suffix(".jsonl")
            try:
                if time.time() - path.stat().st_mtime > self.max_age_s:
                    log.warning("served journal: %s is older than the window, dropped", path)
                    continue
                with path.open("rb") as f:
                    parts, counts = read_journal(f)
            except FileNotFoundError:
                continue
            adopted.parts.extend(parts)
            adopted.parts.extend(pages_as_parts(lock_path.stem, counts))
            adopted.journals += 1
        return adopted, taken

    def served(self, ids: Sequence[str]) -> None:
        """A page served: its ids, before it is answered."""
        self._append(["a", list(ids)])

    def rotate(self, parts: Sequence[tuple[str, Mapping[str, int]]]) -> None:
        """Replace the journal by ``parts`` (everything unwritten now, each with its mark)."""
        lines = [_line(["p", mark, dict(counts)]) for mark, counts in parts]
        tmp = self.path.with_name(f".{self.path.name}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            write_all(fd, b"".join(lines))
        except BaseException:
            os.close(fd)
            raise
        os.replace(tmp, self.path)
        old, self._fd = self._fd, fd
        os.close(old)

    def written(self, mark: str) -> None:
        """The part of ``mark`` is written (all of it)."""
        self._append(["d", mark])

    def close(self, remove: bool) -> None:
        """Stop journaling; ``remove``: nothing is left unwritten, delete the journal (else it
        stays for the next process here to adopt)."""
        os.close(self._fd)
        if remove:
            _remove(self.lock_path)
        os.close(self._lock_fd)
        if remove:
            with contextlib.suppress(OSError):  # only when empty: another process may be here
                self.root.rmdir()

    def _append(self, rec: list[object]) -> None:
        write_all(self._fd, _line(rec))


def _sweep_siblings(root: Path, max_age_s: float) -> None:
    """Delete the journals of other counters indices (namespaces) whose owners are gone and
    that are older than one window (nothing there counts any more), and their emptied
    directories: a namespace no process starts again would keep them for ever. Processes
    starting together sweep the same ones: a file or directory another one deleted meanwhile
    is passed over (before, the start-up failed and the process served without a journal)."""
    siblings = [d for d in listed(root.parent) if d != root]
    for lock_path in (p for d in siblings for p in listed(d) if p.suffix == ".lock"):
        path = lock_path.with_suffix(".jsonl")
        try:
            if time.time() - lock_path.stat().st_mtime <= max_age_s:
                continue
        except FileNotFoundError:
            continue
        if (fd := take_lock(lock_path)) is None:
            continue
        try:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime <= max_age_s:
                    continue
            _remove(lock_path)
            with contextlib.suppress(OSError):
                lock_path.parent.rmdir()
        finally:
            os.close(fd)


def _remove(lock_path: Path) -> None:
    """Delete a journal whose lock this process holds: the journal, a rotation its owner was
    killed writing or failed to write (``.<name>.jsonl``, never named: the journal holds
    everything), then the lock."""
    leftover = lock_path.with_name(f".{lock_path.stem}.jsonl")
    for path in (lock_path.with_suffix(".jsonl"), leftover, lock_path):
        path.unlink(missing_ok=True)


def _line(rec: list[object]) -> bytes:
    return json.dumps(rec, separators=(",", ":")).encode() + b"\n"
