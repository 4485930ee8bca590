"""A local spool of served lists the store did not take, so neither an outage nor a kill -9
during one loses them.

:class:`~opendisco.signals.ServedLog` queues served lists in memory and writes them in
batches. While the store fails, the queue grew and a kill -9 (or a shutdown whose last write
failed) lost all of it: the whole outage's lists, i.e. the training data and off-policy logs
of every answer served degraded. With a spool, a batch whose write fails and everything
queued behind it are appended to a file instead, and while writes keep failing each new list
goes there as it is logged; the flusher writes the files back once the store answers again.

Each API process appends to files of its own, ``<dir>/<name>-<seq>.bson`` (``<dir>`` one per
MongoDB database), one BSON document per list as it will be stored (``os.write`` on an
``O_APPEND`` descriptor: no ``fsync``, so a power cut can lose the last lists, a kill -9 cannot;
a document cut by a kill is the file's last and is skipped). It holds the ``flock`` of
``<name>.lock`` for its life (:mod:`._owned_files`). To write a file back the owner *seals*
it (later lists go to the next ``seq``), inserts its documents and deletes it.

**Who writes a dead process's files.** A spool takes every lock it can get in its directory
when it opens (the process starts) and then at most every ``adopt_every_s`` while its log
flushes: those files' owners are gone, and their files are written back with its own.
A list written twice (its file's writer killed after the insert, before the delete) is a
duplicate request id: the first copy stays, so every list is stored once.

**Bounded.** At most ``max_bytes`` of spooled lists per process (what is beyond is dropped and
counted, as the queue's overflow is); files older than the log's retention are deleted
unread (the store would expire them at once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.errors import BSONError, InvalidBSON

from opendisco._settings import Settings

from ._owned_files import listed, new_lock, remove_stale, take_lock, temporary, write_all

__all__ = ["FILE_BYTES", "ServedSpool", "SpoolFile", "read_spooled", "spool_dir"]

#: a file being appended to is sealed (a new one started) once it holds this many bytes
FILE_BYTES = 16 * 1024 * 1024
log = logging.getLogger("opendisco.signals")
_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)


def spool_dir(settings: Settings) -> Path:
    """Where the API's processes of one MongoDB database spool served lists on this host."""
    return settings.state_dir / "served-log-spool" / settings.mongo_db


def read_spooled(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """Pure: the documents of a spool file, and the bytes skipped at its end (a document its
    writer was killed writing, or bytes that are not one)."""
    docs: list[dict[str, Any]] = []
    at = 0
    while at + 4 <= len(data):
        size = int.from_bytes(data[at : at + 4], "little", signed=True)
        if size < 5 or at + size > len(data):
            break
        try:
            docs.append(bson.decode(data[at : at + size], codec_options=_CODEC))
        except (InvalidBSON, ValueError, OverflowError):
            break
        at += size
    return docs, len(data) - at


@dataclass
class SpoolFile:
    """A sealed file to write back: this process's own, or a dead process's (``owner_fd``:
    the dead owner's lock, held until all its files are written back, then deleted)."""

    path: Path
    lock_path: Path
    owner_fd: int | None = None
    #: this process's bytes in it (what ``bytes`` counted; 0 for an adopted file)
    size: int = 0


class ServedSpool:
    """One process's spool (see the module docstring)."""

    def __init__(
        self, root: Path, name: str, lock_fd: int, max_bytes: int, max_age_s: float
    ) -> None:
        self.root = root
        self.name = name
        self.lock_path = root / f"{name}.lock"
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._lock_fd = lock_fd
        self._seq = 0
        self._fd: int | None = None  # the file being appended to (opened at the first spill)
        self._current_bytes = 0
        self._sealed: list[SpoolFile] = []  # own and adopted files, oldest first
        self.bytes = 0  # own bytes spooled and not written back yet
        self.spooled = 0  # lists appended (in total)
        self.dropped = 0  # lists refused: over max_bytes, or the disk failed

    @classmethod
    def open(cls, root: Path, max_bytes: int, max_age_s: float) -> ServedSpool:
        """A new spool in ``root`` that has taken the files of the processes gone from it.
        Raises ``OSError`` when ``root`` cannot be written."""
        name, lock_fd = new_lock(root)
        spool = cls(root, name, lock_fd, max_bytes, max_age_s)
        spool.adopt()
        return spool

    @classmethod
    def for_settings(cls, settings: Settings) -> ServedSpool:
        return cls.open(
            spool_dir(settings),
            settings.served_log_spool_mb * 1024 * 1024,
            settings.served_log_days * 86400,
        )

    # -- appending --------------------------------------------------------------------------
    def spill(self, docs: Sequence[Mapping[str, Any]]) -> int:
        """Append ``docs`` (encoded lists); returns how many were taken (the others are over
        ``max_bytes`` or the disk failed: counted in ``dropped``)."""
        data: list[bytes] = []
        size = 0
        for doc in docs:
            try:  # one BSON cannot encode (a string with no UTF-8): dropped, not raised
                raw = bson.encode(doc, codec_options=_CODEC)
            except (BSONError, ValueError, OverflowError) as exc:
                log.error("served-list spool: list %r cannot be encoded (%r)", doc.get("_id"), exc)
                continue
            if self.bytes + size + len(raw) > self.max_bytes:
                break
            data.append(raw)
            size += len(raw)
        if not data:
            self.dropped += len(docs)
            log.error("served-list spool full: %d lists dropped", len(docs))
            return 0
        try:
            if self._fd is None:
                self._seq += 1
                path = self._path(self._seq)
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            write_all(self._fd, b"".join(data))
        except OSError as exc:
            self.dropped += len(docs)
            log.error("served-list spool: %d lists not spooled (%r)", len(docs), exc)
            if self._fd is not None:
                # the write may have been cut part-way (a full disk, the file-size limit):
                # what follows goes to a new file, the cut document stays this one's last
                # (skipped). Appended after it, it hid every later list of the file
                self.seal()
            return 0
        self._current_bytes += size
        self.bytes += size
        self.spooled += len(data)
        if self._current_bytes >= FILE_BYTES:  # written back a file at a time: bounded
            self.seal()
        if len(data) < len(docs):
            self.dropped += len(docs) - len(data)
            log.error("served-list spool full: %d lists dropped", len(docs) - len(data))
        return len(data)

    # -- writing back -----------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        """Something is spooled that was not written back yet."""
        return bool(self._sealed) or self._current_bytes > 0

    def seal(self) -> list[SpoolFile]:
        """The files to write back now, oldest first: the adopted ones and this process's,
        the one being appended to included (later lists go to a new file)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._sealed.append(
                SpoolFile(self._path(self._seq), self.lock_path, size=self._current_bytes)
            )
            self._current_bytes = 0
        return list(self._sealed)

    def read(self, f: SpoolFile) -> Iterator[dict[str, Any]]:
        """The documents of a sealed file (none when it is gone)."""
        try:
            data = f.path.read_bytes()
        except FileNotFoundError:
            return iter(())
        except OSError as exc:  # not a file (a directory of that name), unreadable: skipped
            log.error("served-list spool: %s cannot be read, skipped (%r)", f.path, exc)
            return iter(())
        docs, skipped = read_spooled(data)
        if skipped:
            log.warning("served-list spool: %d bytes skipped at the end of %s", skipped, f.path)
        return iter(docs)

    def written(self, f: SpoolFile) -> None:
        """Every document of ``f`` is in the store: delete it (and, for a dead owner's last
        file, its lock)."""
        if f not in self._sealed:  # written back already (two write-backs at once)
            return
        self._sealed.remove(f)
        # what was counted, not the file's size now: a file deleted under the process (its
        # directory removed) kept its bytes counted for good, a write cut part-way made it
        # count the cut bytes of another file off
        self.bytes -= f.size
        with contextlib.suppress(OSError):  # gone, or not a file (left where it is)
            f.path.unlink(missing_ok=True)
        if f.owner_fd is not None and not any(s.lock_path == f.lock_path for s in self._sealed):
            f.lock_path.unlink(missing_ok=True)
            os.close(f.owner_fd)
        self.bytes = max(0, self.bytes)

    # -- dead processes' files ----------------------------------------------------------------
    def adopt(self) -> int:
        """Take the files of every process gone from this directory (to write back with this
        one's); returns how many. Files older than ``max_age_s`` are deleted unread."""
        taken = 0
        for lock_path in listed(self.root):
            if lock_path.suffix != ".lock" or lock_path == self.lock_path:
                continue
            if temporary(lock_path):
                remove_stale(lock_path, self.max_age_s)
                continue
            if any(s.lock_path == lock_path for s in self._sealed):
                continue  # adopted already
            if (fd := take_lock(lock_path)) is None:
                continue
            files = sorted(
                (p for p in listed(self.root) if _owner(p) == lock_path.stem),
                key=lambda p: _seq(p),
            )
            fresh = [p for p in files if not self._expired(p)]
            for p in files:  # expired: deleted unread (else, beside fresh ones, left for ever)
                if p not in fresh:
                    p.unlink(missing_ok=True)
            if not fresh:
                lock_path.unlink(missing_ok=True)
                os.close(fd)
                continue
            self._sealed += [SpoolFile(p, lock_path, fd) for p in fresh]
            taken += len(fresh)
        if taken:
            log.warning("served-list spool: %d files of stopped processes adopted", taken)
        return taken

    def close(self) -> None:
        """Stop spooling. What is not written back stays for the next process here; with
        nothing left, the lock goes too (and the directory, when it is empty)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for f in self._sealed:  # adopted files not written back: their lock is released
            if f.owner_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(f.owner_fd)
                f.owner_fd = None
        own = [p for p in listed(self.root) if _owner(p) == self.name]
        if not own:
            self.lock_path.unlink(missing_ok=True)
        os.close(self._lock_fd)
        if not own:
            with contextlib.suppress(OSError):
                self.root.rmdir()

    def _path(self, seq: int) -> Path:
        return self.root / f"{self.name}-{seq:06d}.bson"

    def _expired(self, path: Path) -> bool:
        try:
            return time.time() - path.stat().st_mtime > self.max_age_s
        except FileNotFoundError:
            return True


def _owner(path: Path) -> str | None:
    """The owner's name of a spool file (``<name>-<seq>.bson``), None for anything else."""
    if path.suffix != ".bson" or temporary(path):
        return None
    name, _, seq = path.stem.rpartition("-")
    return name if seq.isdigit() else None


def _seq(path: Path) -> int:
    return int(path.stem.rpartition("-")[2])
