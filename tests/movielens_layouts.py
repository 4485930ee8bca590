"""MovieLens layouts built at run time from a slice of ml-latest-small (never committed).

``read_slice`` takes the first ``users`` users' ratings (and their movies and tags);
the ``write_*`` functions lay a slice out as one release's files: the CSV releases
(ml-latest-small, ml-latest, ml-20m/25m/32m), ml-1m (``::``, latin-1 ``movies.dat``,
``users.dat``, integer stars) and ml-10m (``::``, half stars, ``tags.dat``). The transforms
make the slice differ the way an unseen dataset would (remapped ids, integer-only ratings,
all timestamps equal, timestamps in milliseconds, mostly high ratings).
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = [
    "Facts",
    "Slice",
    "equal_timestamps",
    "facts",
    "integer_stars",
    "milliseconds",
    "mostly_high",
    "published_small",
    "read_slice",
    "remap_ids",
    "write_csv",
    "write_ml1m",
    "write_ml10m",
]

Row = tuple[str, ...]

#: ``ratings.csv`` of the ml-latest-small release (2018-09-26; its SHA256SUMS)
_SMALL_RATINGS = "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646"


def published_small(path: Path) -> bool:
    """Whether ``path`` holds the ml-latest-small release itself (its ``ratings.csv`` by
    checksum, not by the folder's name: another release laid out under that name is held
    only to what its own files say), which a test may then hold to its published figures."""
    ratings = Path(path) / "ratings.csv"
    return ratings.is_file() and hashlib.sha256(ratings.read_bytes()).hexdigest() == _SMALL_RATINGS


@dataclass(frozen=True)
class Slice:
    movies: list[Row]  # movieId, title, genres
    ratings: list[Row]  # userId, movieId, rating, timestamp
    tags: list[Row]  # userId, movieId, tag, timestamp


def _rows(file: Path) -> list[Row]:
    with file.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        return [tuple(r) for r in reader]


@dataclass(frozen=True)
class Facts:
    """What a CSV release's files say, read plainly (the tests' expectations for whichever
    release ``$OPENDISCO_MOVIELENS`` names, instead of ml-latest-small's own numbers)."""

    movies: int
    users: int
    ratings: int
    first_movie: Row  # movieId, title, genres
    first_rating: Row  # userId, movieId, rating, timestamp
    ratings_of_first_movie: int


def facts(path: Path) -> Facts:
    movies = _rows(path / "movies.csv")
    ratings = _rows(path / "ratings.csv")
    first = movies[0]
    return Facts(
        len(movies),
        len({r[0] for r in ratings}),
        len(ratings),
        first,
        ratings[0],
        sum(r[1] == first[0] for r in ratings),
    )


def read_slice(ml_small: Path, users: int = 60) -> Slice:
    ratings = _rows(ml_small / "ratings.csv")
    keep = sorted({r[0] for r in ratings}, key=int)[:users]
    kept = set(keep)
    ratings = [r for r in ratings if r[0] in kept]
    rated = {r[1] for r in ratings}
    movies = [m for m in _rows(ml_small / "movies.csv") if m[0] in rated]
    tagged = _rows(ml_small / "tags.csv") if (ml_small / "tags.csv").is_file() else []
    tags = [t for t in tagged if t[0] in kept and t[1] in rated]  # tags.csv is optional
    return Slice(movies, ratings, tags)


def remap_ids(s: Slice, user_offset: int = 5000, item_offset: int = 200000) -> Slice:
    """Users and movies renumbered densely from large offsets (ids ml-latest-small never has)."""
    users = {u: str(user_offset + i) for i, u in enumerate(sorted({r[0] for r in s.ratings}))}
    items = {m[0]: str(item_offset + 7 * i) for i, m in enumerate(s.movies)}
    return Slice(
        [(items[m[0]], *m[1:]) for m in s.movies],
        [(users[r[0]], items[r[1]], *r[2:]) for r in s.ratings],
        [(users[t[0]], items[t[1]], *t[2:]) for t in s.tags],
    )


def integer_stars(s: Slice) -> Slice:
    """Ratings 1-5 in whole stars (ml-1m / ml-100k scale): half stars rounded up."""
    rows = [(*r[:2], str(max(1, math.ceil(float(r[2])))), r[3]) for r in s.ratings]
    return replace(s, ratings=rows)


def equal_timestamps(s: Slice, ts: int = 1_000_000_000) -> Slice:
    return replace(
        s,
        ratings=[(*r[:3], str(ts)) for r in s.ratings],
        tags=[(*t[:3], str(ts)) for t in s.tags],
    )


def milliseconds(s: Slice, factor: int = 1000) -> Slice:
    """Timestamps in milliseconds (``factor``: 10**6 microseconds) since the epoch."""
    return replace(
        s,
        ratings=[(*r[:3], str(int(r[3]) * factor)) for r in s.ratings],
        tags=[(*t[:3], str(int(t[3]) * factor)) for t in s.tags],
    )


def mostly_high(s: Slice) -> Slice:
    """Most ratings >= 4: every rating below 4 except one in five moved up to 4-5."""
    out = []
    for i, r in enumerate(s.ratings):
        v = float(r[2])
        if v < 4 and i % 5:
            v = 4.0 + (i % 3) * 0.5
        out.append((*r[:2], f"{v:g}", r[3]))
    return replace(s, ratings=out)


def _csv(file: Path, header: list[str], rows: list[Row]) -> None:
    with file.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_csv(s: Slice, dst: Path, *, extra: bool = False) -> Path:
    """The CSV releases' layout; ``extra`` adds ml-20m/25m's links.csv and genome files."""
    dst.mkdir(parents=True, exist_ok=True)
    _csv(dst / "movies.csv", ["movieId", "title", "genres"], s.movies)
    _csv(dst / "ratings.csv", ["userId", "movieId", "rating", "timestamp"], s.ratings)
    if s.tags:
        _csv(dst / "tags.csv", ["userId", "movieId", "tag", "timestamp"], s.tags)
    if extra:
        _csv(
            dst / "links.csv", ["movieId", "imdbId", "tmdbId"], [(m[0], "1", "2") for m in s.movies]
        )
        _csv(dst / "genome-tags.csv", ["tagId", "tag"], [("1", "funny")])
        _csv(dst / "genome-scores.csv", ["movieId", "tagId", "relevance"], [])
    return dst


def _dat(file: Path, rows: list[Row], encoding: str) -> None:
    with file.open("w", encoding=encoding, newline="") as f:
        f.writelines("::".join(r) + "\n" for r in rows)


def write_ml1m(s: Slice, dst: Path) -> Path:
    """ml-1m: ``ratings.dat`` (whole stars), latin-1 ``movies.dat``, ``users.dat``; no tags."""
    dst.mkdir(parents=True, exist_ok=True)
    s = integer_stars(s)
    movies = [(m[0], m[1].encode("latin-1", "replace").decode("latin-1"), m[2]) for m in s.movies]
    _dat(dst / "movies.dat", movies, "latin-1")
    _dat(dst / "ratings.dat", list(s.ratings), "latin-1")
    users = sorted({r[0] for r in s.ratings}, key=int)
    genders = ("M", "F")
    rows = [(u, genders[i % 2], "25", str(i % 21), "55455") for i, u in enumerate(users)]
    _dat(dst / "users.dat", rows, "latin-1")
    return dst


def write_ml10m(s: Slice, dst: Path) -> Path:
    """ml-10m (ml-10M100K): ``ratings.dat`` (half stars), ``movies.dat``, ``tags.dat``."""
    dst.mkdir(parents=True, exist_ok=True)
    _dat(dst / "movies.dat", list(s.movies), "utf-8")
    _dat(dst / "ratings.dat", list(s.ratings), "utf-8")
    _dat(dst / "tags.dat", [t for t in s.tags if "::" not in t[2]], "utf-8")
    return dst
