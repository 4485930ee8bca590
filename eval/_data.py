"""MovieLens readers: pure parsing, no I/O beyond reading the files named.

Two layouts are recognised from the files present in the dataset directory:

* **ml-latest-small** (and other ``ml-latest*`` releases): ``ratings.csv``
  (``userId,movieId,rating,timestamp``, header row, CRLF line endings in the original zip) and
  ``movies.csv`` (``movieId,title,genres``, UTF-8, quoted titles, genres ``|``-separated,
  ``(no genres listed)`` for none).
* **ml-100k**: ``u.data`` (tab-separated ``user item rating timestamp``, no header) and
  ``u.item`` (``|``-separated, latin-1, 19 genre flags at the end).

Ids follow the project contract: items are ``m<movieId>``, users ``u<userId>``. Timestamps
are Unix seconds (UTC). Item dicts follow the MongoDB ``items`` schema of
docs/architecture.md; ``popularity`` and ``quality`` are left at 0 here because deriving them
from *all* ratings would leak the held-out period into the served pipeline — the replay sets
them from the training split only.

When the ingest team's ``opendisco.ingest.load_movielens`` is importable,
:func:`load_dataset` uses it (one parser for the whole project) and converts its result;
:func:`read_movielens` is the standalone reader used otherwise.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from opendisco._exceptions import ConfigError, InvalidInput

__all__ = ["POSITIVE_THRESHOLD", "Dataset", "Ratings", "load_dataset", "read_movielens"]

#: A rating at or above this value is a positive interaction (MovieLens 0.5-5 stars).
POSITIVE_THRESHOLD = 4.0

_ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")


@dataclass(frozen=True)
class Ratings:
    """Explicit ratings as parallel arrays (one row per rating)."""

    user_ids: np.ndarray  # object array of "u<id>"
    item_ids: np.ndarray  # object array of "m<id>"
    ratings: np.ndarray  # float32
    timestamps: np.ndarray  # int64, Unix seconds

    def __len__(self) -> int:
        return len(self.ratings)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[str, str, float, Any]]) -> Ratings:
        """From ``(user_id, item_id, rating, timestamp)`` rows; timestamp int or datetime."""
        users = np.array([r[0] for r in rows], dtype=object)
        items = np.array([r[1] for r in rows], dtype=object)
        values = np.array([float(r[2]) for r in rows], dtype=np.float32)
        ts = np.array([_unix(r[3]) for r in rows], dtype=np.int64)
        return cls(users, items, values, ts)

    def positives(self, threshold: float = POSITIVE_THRESHOLD) -> Ratings:
        """The ratings ``>= threshold`` (the positives of the evaluation)."""
        keep = self.ratings >= threshold
        return Ratings(
            self.user_ids[keep], self.item_ids[keep], self.ratings[keep], self.timestamps[keep]
        )


@dataclass(frozen=True)
class Dataset:
    """A parsed MovieLens release: ratings plus item documents keyed by item id.

    ``users`` (user id → user document) is filled by datasets that know their members (the
    synthetic marketplace); the served replay writes those documents instead of empty users.
    """

    name: str
    ratings: Ratings
    items: dict[str, dict[str, Any]] = field(repr=False)
    users: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)


def _unix(value: Any) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp())
    return int(value)


def _movie(movie_id: str, raw_title: str, genres: list[str]) -> dict[str, Any]:
    title = raw_title.strip()
    year = None
    m = _YEAR.search(title)
    if m:
        year = int(m.group(1))
        title = title[: m.start()].strip()
    created = datetime(year or 1970, 1, 1, tzinfo=UTC)
    return {
        "_id": f"m{movie_id}",
        "kind": "movie",
        "title": title,
        "description": f"{title} ({year})" if year else title,
        "tags": genres,
        "category": genres[0] if genres else None,
        "owner_id": None,
        "created_at": created,
        "updated_at": created,
        "version": 1,
        "deleted": False,
        "year": year,
        "location": None,
        "popularity": 0.0,
        "quality": 0.0,
        "available": True,
        "exposure_cap": None,
    }


def _read_latest(path: Path) -> Dataset:
    rows: list[tuple[str, str, float, int]] = []
    # newline="" lets csv handle the CRLF line endings of the original release
    with (path / "ratings.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != ["userId", "movieId", "rating", "timestamp"]:
            raise ConfigError(f"{path / 'ratings.csv'}: unexpected header {header!r}")
        for user, movie, rating, ts in reader:
            rows.append((f"u{user}", f"m{movie}", float(rating), int(ts)))
    items: dict[str, dict[str, Any]] = {}
    movies = path / "movies.csv"
    if movies.is_file():
        with movies.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            for movie, title, genres in reader:
                tags = [] if genres == "(no genres listed)" else genres.split("|")
                doc = _movie(movie, title, tags)
                items[doc["_id"]] = doc
    return Dataset(path.name, Ratings.from_rows(rows), items)


def _read_100k(path: Path) -> Dataset:
    rows: list[tuple[str, str, float, int]] = []
    with (path / "u.data").open(encoding="latin-1") as fh:
        for line in fh:
            if line.strip():
                user, movie, rating, ts = line.split("\t")
                rows.append((f"u{user}", f"m{movie}", float(rating), int(ts)))
    items: dict[str, dict[str, Any]] = {}
    item_file = path / "u.item"
    if item_file.is_file():
        with item_file.open(encoding="latin-1") as fh:
            for line in fh:
                parts = line.rstrip("\r\n").split("|")
                if len(parts) < 5 + len(_ML100K_GENRES):
                    continue
                flags = parts[-len(_ML100K_GENRES) :]
                tags = [g for g, f in zip(_ML100K_GENRES, flags, strict=True) if f == "1"]
                doc = _movie(parts[0], parts[1], [t for t in tags if t != "unknown"])
                items[doc["_id"]] = doc
    return Dataset(path.name, Ratings.from_rows(rows), items)


def read_movielens(path: str | Path) -> Dataset:
    """Parse an ml-latest(-small) or ml-100k directory (layout detected from its files)."""
    path = Path(path)
    if (path / "ratings.csv").is_file():
        return _read_latest(path)
    if (path / "u.data").is_file():
        return _read_100k(path)
    raise ConfigError(f"{path}: neither ratings.csv (ml-latest) nor u.data (ml-100k) found")


def load_dataset(path: str | Path) -> Dataset:
    """The dataset at ``path``, parsed by ``opendisco.ingest.load_movielens`` when available.

    Falls back to :func:`read_movielens` when the ingest loader is absent (or does not know
    the layout, e.g. ml-100k).
    """
    path = Path(path)
    try:
        from opendisco.ingest import load_movielens  # type: ignore[attr-defined]
    except ImportError:
        return read_movielens(path)
    try:
        data = load_movielens(path)
    except (ConfigError, InvalidInput, FileNotFoundError):
        return read_movielens(path)
    ratings = data.ratings
    if isinstance(ratings, Ratings):
        converted = ratings
    else:
        converted = Ratings.from_rows([tuple(r) for r in ratings])
    items = data.items
    if not isinstance(items, dict):
        items = {doc["_id"]: dict(doc) for doc in items}
    return Dataset(path.name, converted, items)
