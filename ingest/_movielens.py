"""MovieLens loader (pure parse): ml-latest-small (CSV) and ml-100k (``u.item``/``u.data``).

Items are ``m<movieId>`` (kind ``movie``), users ``u<userId>``; ratings are
``(user_id, item_id, rating, timestamp)`` tuples sorted by time.
"""

from __future__ import annotations

import csv
import functools
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opendisco._exceptions import InvalidInput

__all__ = ["MovieLensData", "load_movielens"]

Rating = tuple[str, str, float, datetime]

_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


@dataclass
class MovieLensData:
    items: list[dict[str, Any]]
    users: list[dict[str, Any]]
    ratings: list[Rating] = field(repr=False)
    format: str = "ml-latest-small"


def _ts(seconds: str | int) -> datetime:
    return datetime.fromtimestamp(int(seconds), tz=UTC)


def _split_title(raw: str) -> tuple[str, int | None]:
    raw = raw.strip()
    m = _YEAR.search(raw)
    if not m:
        return raw, None
    title = raw[: m.start()].strip()
    # "Matrix, The" -> "The Matrix"
    for art in ("The", "A", "An"):
        if title.endswith(f", {art}"):
            title = f"{art} {title[: -len(art) - 2]}"
    return title, int(m.group(1))


def _build(
    movies: dict[str, tuple[str, int | None, list[str]]],
    ratings: list[Rating],
    user_tags: dict[str, Counter[str]],
    user_info: dict[str, dict[str, Any]],
    fmt: str,
    derived: bool = True,
) -> MovieLensData:
    ratings.sort(key=lambda r: (r[3], r[0], r[1]))
    per_item: dict[str, list[float]] = defaultdict(list)
    first_seen: dict[str, datetime] = {}
    last_seen: dict[str, datetime] = {}
    for _uid, iid, r, ts in ratings:
        per_item[iid].append(r)
        first_seen.setdefault(iid, ts)
        last_seen[iid] = ts
    all_r = [r for _, _, r, _ in ratings]
    global_mean = sum(all_r) / len(all_r) if all_r else 3.5
    epoch = datetime(1995, 1, 1, tzinfo=UTC)
    items = []
    for mid, (title, year, genres) in movies.items():
        iid = f"m{mid}"
        rs = per_item.get(iid, [])
        # Bayesian mean on a 0.5..5 scale, mapped to [0, 1]
        bayes = (sum(rs) + 10 * global_mean) / (len(rs) + 10)
        top_tags = [t for t, _ in user_tags.get(iid, Counter()).most_common(5)] if derived else []
        genre_words = [g for g in genres if g and g != "(no genres listed)" and g != "unknown"]
        desc = f"{title}" + (f" ({year})" if year else "") + "."
        if genre_words:
            words = ", ".join(g.lower() for g in genre_words)
            desc += f" {'An' if words[0] in 'aeiou' else 'A'} {words} film."
        if top_tags:
            desc += f" Viewers describe it as {', '.join(top_tags)}."
        if derived:
            created, updated = first_seen.get(iid, epoch), last_seen.get(iid, epoch)
        else:  # nothing learnt from ratings or tags: the release year only
            created = updated = datetime(
                year if year and 1000 <= year <= 9999 else 1970, 1, 1, tzinfo=UTC
            )
        items.append(
            {
                "_id": iid,
                "kind": "movie",
                "title": title,
                "description": desc,
                "tags": genre_words + [t for t in top_tags if t not in genre_words],
                "category": genre_words[0] if genre_words else None,
                "owner_id": None,
                "created_at": created,
                "updated_at": updated,
                "version": 1,
                "deleted": False,
                "year": year if year and 1000 <= year <= 9999 else None,
                "location": None,
                "popularity": float(len(rs)) if derived else 0.0,
                "quality": round(min(1.0, max(0.0, (bayes - 0.5) / 4.5)), 4) if derived else 0.0,
                "available": True,
                "exposure_cap": None,
            }
        )
    genres_of = {f"m{mid}": g for mid, (_, _, g) in movies.items()}
    liked: dict[str, Counter[str]] = defaultdict(Counter)
    first_rating: dict[str, datetime] = {}
    for uid, iid, r, ts in ratings:
        first_rating.setdefault(uid, ts)
        if r >= 4.0:
            liked[uid].update(g for g in genres_of.get(iid, []) if g not in ("unknown",))
    users = []
    for uid in sorted(first_rating, key=lambda u: int(u[1:]) if u[1:].isdigit() else math.inf):
        u = {
            "_id": uid,
            "interests": [g for g, _ in liked[uid].most_common(3)],
            "location": None,
            "created_at": first_rating[uid],
        }
        u.update(user_info.get(uid, {}))
        users.append(u)
    return MovieLensData(items=items, users=users, ratings=ratings, format=fmt)


_Movies = dict[str, tuple[str, int | None, list[str]]]


def _table(file: Path) -> tuple[dict[str, int], list[list[str]]]:
    """A CSV file's column positions (by header name) and rows (``csv.reader``: lists, not a
    dict per row)."""
    with file.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        return {name: i for i, name in enumerate(header)}, list(reader)


@functools.lru_cache(maxsize=4)
def _parse_latest(
    path: Path, signature: tuple[int, ...]
) -> tuple[_Movies, tuple[Rating, ...], dict[str, Counter[str]]]:
    """The parsed files of one ml-latest-small directory, cached while their sizes and
    modification times (``signature``) stay the same: a process that loads it again (the
    evaluator's stages, the test suite) parses it once. Callers get copies of what they
    change."""
    movies: _Movies = {}
    col, rows = _table(path / "movies.csv")
    for row in rows:
        title, year = _split_title(row[col["title"]])
        movies[row[col["movieId"]]] = (title, year, row[col["genres"]].split("|"))
    col, rows = _table(path / "ratings.csv")
    u, m, r, t = col["userId"], col["movieId"], col["rating"], col["timestamp"]
    ratings = [(f"u{x[u]}", f"m{x[m]}", float(x[r]), _ts(x[t])) for x in rows]
    ratings.sort(key=lambda x: (x[3], x[0], x[1]))
    user_tags: dict[str, Counter[str]] = defaultdict(Counter)
    tags_file = path / "tags.csv"
    if tags_file.is_file():
        col, rows = _table(tags_file)
        for row in rows:
            tag = row[col["tag"]].strip().lower()
            if tag and len(tag) <= 64:
                user_tags[f"m{row[col['movieId']]}"][tag] += 1
    return movies, tuple(ratings), dict(user_tags)


def _signature(path: Path) -> tuple[int, ...]:
    out: list[int] = []
    for name in ("movies.csv", "ratings.csv", "tags.csv"):
        try:
            st = (path / name).stat()
        except FileNotFoundError:
            out += [-1, -1]
        else:
            out += [st.st_size, st.st_mtime_ns]
    return tuple(out)


def _load_latest(path: Path, derived: bool = True) -> MovieLensData:
    path = path.resolve()
    movies, ratings, user_tags = _parse_latest(path, _signature(path))
    return _build(dict(movies), list(ratings), user_tags, {}, "ml-latest-small", derived)


def _load_100k(path: Path, derived: bool = True) -> MovieLensData:
    movies: dict[str, tuple[str, int | None, list[str]]] = {}
    with (path / "u.item").open(encoding="latin-1") as f:
        for line in f:
            parts = line.rstrip("\n").split("|")
            if len(parts) < 5 + len(_ML100K_GENRES):
                continue
            title, year = _split_title(parts[1])
            if year is None and parts[2][-4:].isdigit():
                year = int(parts[2][-4:])
            flags = parts[5 : 5 + len(_ML100K_GENRES)]
            genres = [g for g, flag in zip(_ML100K_GENRES, flags, strict=True) if flag == "1"]
            movies[parts[0]] = (title, year, genres)
    ratings: list[Rating] = []
    with (path / "u.data").open(encoding="latin-1") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                ratings.append((f"u{parts[0]}", f"m{parts[1]}", float(parts[2]), _ts(parts[3])))
    info: dict[str, dict[str, Any]] = {}
    user_file = path / "u.user"
    if user_file.is_file():
        with user_file.open(encoding="latin-1") as f:
            for line in f:
                parts = line.rstrip("\n").split("|")
                if len(parts) >= 4:
                    info[f"u{parts[0]}"] = {
                        "age": int(parts[1]),
                        "gender": {"F": "f", "M": "m"}.get(parts[2], "x"),
                        "occupation": parts[3],
                    }
    return _build(movies, ratings, {}, info, "ml-100k", derived)


def load_movielens(path: str | Path, *, derived: bool = True) -> MovieLensData:
    """Parse a MovieLens directory (ml-latest-small or ml-100k layout); no I/O beyond reading.

    ``derived=False`` leaves out everything learnt from ratings and tags.csv (popularity,
    quality, "viewers describe it as" tags, first/last-rated dates): offline evaluation needs
    items that carry nothing from the held-out period.
    """
    path = Path(path)
    if (path / "movies.csv").is_file() and (path / "ratings.csv").is_file():
        return _load_latest(path, derived)
    if (path / "u.item").is_file() and (path / "u.data").is_file():
        return _load_100k(path, derived)
    raise InvalidInput(f"{path}: neither ml-latest-small (movies.csv) nor ml-100k (u.item)")
