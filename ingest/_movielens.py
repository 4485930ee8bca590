"""MovieLens loader (pure parse): every classic release layout (see ``_movielens_files``).

Items are ``m<movieId>`` (kind ``movie``), users ``u<userId>``; ratings are
``(user_id, item_id, rating, timestamp)`` tuples sorted by time. Nothing is fitted to one
release: the rating scale (0.5-5 half stars, 1-5 whole stars, ...) and the positive threshold
come from the ratings read.
"""

from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._movielens_files import LAYOUTS, Parsed, Rating, detect, read_layout

__all__ = ["MovieLensData", "load_movielens", "positive_threshold"]


def positive_threshold(top: float) -> float:
    """A rating at or above this is a positive: 4/5 of the top of the scale (4 stars on the
    MovieLens 5-star scales, whatever the lowest step)."""
    return 0.8 * top


@dataclass
class MovieLensData:
    items: list[dict[str, Any]]
    users: list[dict[str, Any]]
    ratings: list[Rating] = field(repr=False)
    format: str = "ml-latest-small"
    scale: tuple[float, float] = (0.5, 5.0)  # lowest and highest rating read

    @property
    def positive_threshold(self) -> float:
        return positive_threshold(self.scale[1])


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
    global_mean = sum(all_r) / len(all_r)
    lo, hi = min(all_r), max(all_r)
    epoch = ratings[0][3]  # an item nobody rated: the first rating's time
    items = []
    for mid, (title, year, genres) in movies.items():
        iid = f"m{mid}"
        rs = per_item.get(iid, [])
        # Bayesian mean on the ratings' own scale, mapped to [0, 1]
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
                "quality": _unit(bayes, lo, hi) if derived else 0.0,
                "available": True,
                "exposure_cap": None,
            }
        )
    genres_of = {f"m{mid}": g for mid, (_, _, g) in movies.items()}
    liked: dict[str, Counter[str]] = defaultdict(Counter)
    first_rating: dict[str, datetime] = {}
    liked_at = positive_threshold(hi)
    for uid, iid, r, ts in ratings:
        first_rating.setdefault(uid, ts)
        if r >= liked_at:
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
    return MovieLensData(items, users, ratings, fmt, (lo, hi))


def _unit(value: float, lo: float, hi: float) -> float:
    return round(min(1.0, max(0.0, (value - lo) / (hi - lo))), 4) if hi > lo else 0.5


@functools.lru_cache(maxsize=4)
def _parse(path: Path, layout: str, signature: tuple[int, ...]) -> Parsed:
    """The parsed files of one release directory, cached while their sizes and modification
    times (``signature``) stay the same: a process that loads it again (the evaluator's
    stages, the test suite) parses it once. Callers get copies of what they change."""
    return read_layout(path, layout)


def _signature(path: Path, layout: str) -> tuple[int, ...]:
    movies, ratings, optional = LAYOUTS[layout]
    out: list[int] = []
    for name in (movies, ratings, *optional):
        try:
            st = (path / name).stat()
        except FileNotFoundError:
            out += [-1, -1]
        else:
            out += [st.st_size, st.st_mtime_ns]
    return tuple(out)


#: CSV releases known by their directory name; another name is reported as ``movielens-csv``
_CSV_RELEASES = ("ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m")


def _format(path: Path, layout: str) -> str:
    if layout == "csv":
        return path.name if path.name in _CSV_RELEASES else "movielens-csv"
    if layout == "dat":
        return "ml-1m" if (path / "users.dat").is_file() else "ml-10m"
    return layout


def load_movielens(path: str | Path, *, derived: bool = True) -> MovieLensData:
    """Parse a MovieLens release directory; no I/O beyond reading. Layouts: the CSV releases
    (ml-latest-small, ml-latest, ml-20m/25m/32m), ml-1m and ml-10m (``::``-separated ``.dat``
    files) and ml-100k; anything else, a missing file, a malformed row (named by its line) or
    an empty dataset is :class:`InvalidInput`.

    ``derived=False`` leaves out everything learnt from ratings and tags (popularity,
    quality, "viewers describe it as" tags, first/last-rated dates): offline evaluation needs
    items that carry nothing from the held-out period.
    """
    path = Path(path).resolve()
    layout = detect(path)
    movies, ratings, user_tags, info = _parse(path, layout, _signature(path, layout))
    fmt = _format(path, layout)
    return _build(dict(movies), list(ratings), user_tags, info, fmt, derived)
