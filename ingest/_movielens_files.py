"""MovieLens files → parsed rows, one reader per layout (pure; no document building).

Layouts (``detect``):

* ``csv``: ``movies.csv`` + ``ratings.csv`` (+ ``tags.csv``): ml-latest-small, ml-latest,
  ml-20m, ml-25m, ml-32m (their other files, links and the tag genome, are not read);
* ``dat``: ``movies.dat`` + ``ratings.dat``, ``::``-separated: ml-1m (latin-1, ``users.dat``)
  and ml-10m (``tags.dat``);
* ``ml-100k``: ``u.item`` + ``u.data`` (+ ``u.user``).

Every problem is an :class:`InvalidInput` naming the file and, for a bad row, its line.
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opendisco._exceptions import InvalidInput

__all__ = ["LAYOUTS", "Movies", "Parsed", "Rating", "detect", "read_layout", "split_title"]

Rating = tuple[str, str, float, datetime]
RawRating = tuple[str, str, float, int | float]  # timestamp as read, in the file's unit
Movies = dict[str, tuple[str, int | None, list[str]]]
# movies, ratings sorted by time, tags per item, user documents' extra fields
Parsed = tuple[Movies, tuple[Rating, ...], dict[str, Counter[str]], dict[str, dict[str, Any]]]

#: layout → (movies file, ratings file, optional files)
LAYOUTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "csv": ("movies.csv", "ratings.csv", ("tags.csv",)),
    "dat": ("movies.dat", "ratings.dat", ("tags.dat", "users.dat")),
    "ml-100k": ("u.item", "u.data", ("u.user",)),
}
_EXPECTED = (
    "movies.csv + ratings.csv (ml-latest-small, ml-latest, ml-20m/25m/32m), "
    "movies.dat + ratings.dat (ml-1m, ml-10m) or u.item + u.data (ml-100k)"
)
_ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
# ml-1m README: users.dat occupation codes
_ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip


def detect(path: Path) -> str:
    """The layout of the directory at ``path`` (a key of :data:`LAYOUTS`)."""
    if not path.is_dir():
        raise InvalidInput(f"{path}: not a directory (expected a MovieLens release: {_EXPECTED})")
    for layout, (movies, ratings, _) in LAYOUTS.items():
        has = [(path / movies).is_file(), (path / ratings).is_file()]
        if all(has):
            return layout
        if any(has):
            missing = ratings if has[0] else movies
            raise InvalidInput(f"{path}: {missing} is missing ({movies} needs {ratings})")
    raise InvalidInput(f"{path}: no MovieLens files; expected {_EXPECTED}")


def split_title(raw: str) -> tuple[str, int | None]:
    """``"Matrix, The (1999)"`` → ``("The Matrix", 1999)``."""
    raw = raw.strip()
    year = None
    if raw.endswith(")") and raw[-6:-5] == "(" and raw[-5:-1].isdigit():
        year, raw = int(raw[-5:-1]), raw[:-6].strip()
    for art in ("The", "A", "An"):
        if raw.endswith(f", {art}"):
            raw = f"{art} {raw[: -len(art) - 2]}"
    return raw, year


#: a Unix time in seconds at or past this is beyond the year 5000: the file counts smaller
#: units since the epoch (milliseconds: 1e11 of them is March 1973), micro- or nanoseconds
_SECONDS_END = 10**11


def _epoch(value: str) -> int | float:
    """A timestamp field as a number (an integer, or decimal seconds), in the file's unit."""
    try:
        return int(value)
    except ValueError:
        t = float(value)
        if not math.isfinite(t):
            raise
        return t


def _dated(file: Path, ratings: list[RawRating]) -> list[Rating]:
    """The ratings with their timestamps as UTC datetimes. The unit is the file's: seconds,
    unless its latest timestamp is past the year 5000 in seconds, then milliseconds (or micro-
    or nanoseconds, whichever brings it before): exports in milliseconds were refused."""
    top = max((abs(r[3]) for r in ratings), default=0)
    unit = 1
    while top / unit >= _SECONDS_END and unit < 10**9:
        unit *= 1000
    out: list[Any] = ratings  # converted in place: a big release holds one list, not two
    for n, (user, item, value, t) in enumerate(ratings):
        try:
            out[n] = (user, item, value, datetime.fromtimestamp(t / unit, tz=UTC))
        except (ValueError, OverflowError, OSError) as exc:
            raise InvalidInput(f"{file}: timestamp {t} is out of range ({exc})") from exc
    return out


def _ratings() -> Callable[[str, str, str, str], RawRating]:
    """A row → rating parser sharing one string per user and per movie id (a big release
    repeats each id hundreds of times: a third less memory on 2M ratings)."""
    ids: dict[str, str] = {}

    def one(prefix: str, raw: str) -> str:
        key = prefix + raw
        out = ids.get(key)
        if out is None:
            if not raw.strip():
                raise ValueError(f"empty {'user' if prefix == 'u' else 'movie'} id")
            out = ids[key] = prefix + raw.strip()
        return out

    def rating(user: str, item: str, value: str, seconds: str) -> RawRating:
        r = float(value)
        if not math.isfinite(r):
            raise ValueError(f"rating {value!r}")
        return (one("u", user), one("m", item), r, _epoch(seconds))

    return rating


def _parse_rows(
    file: Path, rows: Iterable[tuple[int, list[str]]], fields: int, make: Callable[..., Any]
) -> Iterator[Any]:
    """``make(*row[:fields])`` per numbered row; a short or unparsable row is an error."""
    for line, row in rows:
        if not row or row == [""]:
            continue
        try:
            if len(row) < fields:
                raise ValueError(f"{len(row)} field(s), expected {fields}")
            yield make(*row[:fields])
        except (ValueError, OverflowError, OSError) as exc:
            raise InvalidInput(f"{file}: line {line}: malformed row {row!r} ({exc})") from exc


def _csv_rows(file: Path, columns: list[str]) -> Iterator[tuple[int, list[str]]]:
    """Numbered rows of a CSV file, reordered to ``columns`` (found by header name)."""
    with file.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise InvalidInput(
                f"{file}: header {','.join(header) or '(empty)'} lacks {', '.join(missing)} "
                f"(expected {','.join(columns)})"
            )
        pos = [header.index(c) for c in columns]
        width = max(pos) + 1
        for row in reader:
            if len(row) >= width:
                yield reader.line_num, [row[p] for p in pos]
            elif row and row != [""]:
                raise InvalidInput(
                    f"{file}: line {reader.line_num}: malformed row {row!r} "
                    f"({len(row)} field(s), expected {len(header)})"
                )


def _dat_rows(file: Path, sep: str | None = "::") -> Iterator[tuple[int, list[str]]]:
    """Numbered rows split at ``sep`` (``None``: whitespace); utf-8, else latin-1."""
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # ml-1m's movies.dat, ml-100k's files
        text = raw.decode("latin-1")
    for n, line in enumerate(text.splitlines(), 1):
        yield n, line.split(sep) if line.strip() else []


def _movie(mid: str, title: str, genres: str) -> tuple[str, tuple[str, int | None, list[str]]]:
    if not mid.strip():
        raise ValueError("empty movie id")
    name, year = split_title(title)
    return mid.strip(), (name, year, genres.split("|"))


def _tag(user: str, item: str, tag: str, *_: str) -> tuple[str, str]:
    return f"m{item.strip()}", tag.strip().lower()


def _tags(pairs: Iterable[tuple[str, str]]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for iid, tag in pairs:
        if tag and len(tag) <= 64:
            out[iid][tag] += 1
    return dict(out)


def _read_csv(path: Path) -> tuple[Movies, list[Rating], dict[str, Counter[str]], dict]:
    file = path / "movies.csv"
    movies = dict(_parse_rows(file, _csv_rows(file, ["movieId", "title", "genres"]), 3, _movie))
    file = path / "ratings.csv"
    rows = _csv_rows(file, ["userId", "movieId", "rating", "timestamp"])
    ratings = _dated(file, list(_parse_rows(file, rows, 4, _ratings())))
    tags: dict[str, Counter[str]] = {}
    if (file := path / "tags.csv").is_file():
        rows = _csv_rows(file, ["userId", "movieId", "tag"])
        tags = _tags(_parse_rows(file, rows, 3, _tag))
    return movies, ratings, tags, {}


def _ml1m_user(user: str, gender: str, age: str, occupation: str, *_: str) -> tuple[str, dict]:
    code = int(occupation)
    job = _ML1M_OCCUPATIONS[code] if 0 <= code < len(_ML1M_OCCUPATIONS) else "other"
    doc = {"age": int(age), "gender": {"F": "f", "M": "m"}.get(gender, "x"), "occupation": job}
    return f"u{user.strip()}", doc


def _read_dat(path: Path) -> tuple[Movies, list[Rating], dict[str, Counter[str]], dict]:
    file = path / "movies.dat"
    movies = dict(_parse_rows(file, _dat_rows(file), 3, _movie))
    file = path / "ratings.dat"
    ratings = _dated(file, list(_parse_rows(file, _dat_rows(file), 4, _ratings())))
    tags: dict[str, Counter[str]] = {}
    if (file := path / "tags.dat").is_file():
        tags = _tags(_parse_rows(file, _dat_rows(file), 4, _tag))
    info: dict[str, dict[str, Any]] = {}
    if (file := path / "users.dat").is_file():
        info = dict(_parse_rows(file, _dat_rows(file), 4, _ml1m_user))
    return movies, ratings, tags, info


def _ml100k_movie(*parts: str) -> tuple[str, tuple[str, int | None, list[str]]]:
    title, year = split_title(parts[1])
    if year is None and parts[2][-4:].isdigit():
        year = int(parts[2][-4:])
    flags = parts[5 : 5 + len(_ML100K_GENRES)]
    genres = [g for g, flag in zip(_ML100K_GENRES, flags, strict=True) if flag == "1"]
    return parts[0].strip(), (title, year, genres)


def _ml100k_user(user: str, age: str, gender: str, occupation: str) -> tuple[str, dict]:
    doc = {"age": int(age), "gender": {"F": "f", "M": "m"}.get(gender, "x")}
    return f"u{user.strip()}", {**doc, "occupation": occupation}


def _read_100k(path: Path) -> tuple[Movies, list[Rating], dict[str, Counter[str]], dict]:
    file = path / "u.item"
    n = 5 + len(_ML100K_GENRES)
    movies = dict(_parse_rows(file, _dat_rows(file, "|"), n, _ml100k_movie))
    file = path / "u.data"
    ratings = _dated(file, list(_parse_rows(file, _dat_rows(file, None), 4, _ratings())))
    info: dict[str, dict[str, Any]] = {}
    if (file := path / "u.user").is_file():
        info = dict(_parse_rows(file, _dat_rows(file, "|"), 4, _ml100k_user))
    return movies, ratings, {}, info


_READERS = {"csv": _read_csv, "dat": _read_dat, "ml-100k": _read_100k}


def read_layout(path: Path, layout: str) -> Parsed:
    """The parsed files of one release; no movies or no ratings is an error."""
    movies, ratings, tags, info = _READERS[layout](path)
    names = LAYOUTS[layout]
    if not movies:
        raise InvalidInput(f"{path / names[0]}: no movies (empty dataset)")
    if not ratings:
        raise InvalidInput(f"{path / names[1]}: no ratings (empty dataset)")
    ratings.sort(key=lambda x: (x[3], x[0], x[1]))
    return movies, tuple(ratings), tags, info
