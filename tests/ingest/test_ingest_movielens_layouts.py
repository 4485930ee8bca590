"""Every classic MovieLens layout, built at run time from a slice of ml-latest-small or the
release $OPENDISCO_MOVIELENS names (tests/movielens_layouts.py), reads as the same movies and
ratings; bad input is a clear InvalidInput naming the file and line."""

from __future__ import annotations

import re
from pathlib import Path

import movielens_layouts as L
import pytest

from opendisco._exceptions import InvalidInput
from opendisco.ingest import load_movielens, validate_item


@pytest.fixture(scope="module")
def ml_slice(movielens: Path) -> L.Slice:
    return L.read_slice(movielens, users=20)


def _triples(data: object) -> set[tuple[str, str, float, int]]:
    return {(u, i, r, int(t.timestamp())) for u, i, r, t in data.ratings}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "extra", "fmt"),
    [
        ("ml-25m", True, "ml-25m"),
        ("ml-latest", False, "ml-latest"),
        ("mine", True, "movielens-csv"),
    ],
)
def test_csv_releases_are_read(
    ml_slice: L.Slice, tmp_path: Path, name: str, extra: bool, fmt: str
) -> None:
    data = load_movielens(L.write_csv(ml_slice, tmp_path / name, extra=extra))
    assert data.format == fmt
    assert len(data.ratings) == len(ml_slice.ratings) and len(data.items) == len(ml_slice.movies)
    stars = [float(r[2]) for r in ml_slice.ratings]  # the scale read is the data's own
    assert data.scale == (min(stars), max(stars)) and data.positive_threshold == 0.8 * max(stars)


@pytest.mark.parametrize("factor", [1000, 10**6])
def test_timestamps_in_milliseconds_read_as_the_same_times(
    ml_slice: L.Slice, tmp_path: Path, factor: int
) -> None:
    """An export counting milliseconds (or microseconds) since the epoch was refused: its first
    row was "malformed" (year 32549 is out of range). Decimal seconds read too."""
    seconds = load_movielens(L.write_csv(ml_slice, tmp_path / "s"))
    data = load_movielens(L.write_csv(L.milliseconds(ml_slice, factor), tmp_path / "ms"))
    assert _triples(data) == _triples(seconds)
    decimal = L.Slice(ml_slice.movies, [(*r[:3], f"{r[3]}.25") for r in ml_slice.ratings], [])
    data = load_movielens(L.write_csv(decimal, tmp_path / "decimal"))
    assert _triples(data) == _triples(seconds)


def test_ml1m_layout(ml_slice: L.Slice, tmp_path: Path) -> None:
    csv_data = load_movielens(L.write_csv(L.integer_stars(ml_slice), tmp_path / "csv"))
    data = load_movielens(L.write_ml1m(ml_slice, tmp_path / "ml-1m"))
    assert data.format == "ml-1m"
    assert _triples(data) == _triples(csv_data)
    assert data.scale == (1.0, 5.0) and data.positive_threshold == 4.0
    # latin-1 titles, the same documents as the CSV release's
    by_id = {i["_id"]: i for i in csv_data.items}
    assert all(i["title"] == by_id[i["_id"]]["title"] for i in data.items if i["title"].isascii())
    for item in data.items:
        validate_item(item)
    u = data.users[0]
    assert (u["gender"], u["age"], u["occupation"]) == ("m", 25, "other")


def test_ml10m_layout_with_remapped_ids(ml_slice: L.Slice, tmp_path: Path) -> None:
    s = L.remap_ids(ml_slice)
    data = load_movielens(L.write_ml10m(s, tmp_path / "ml-10M100K"))
    assert data.format == "ml-10m"
    assert _triples(data) == _triples(load_movielens(L.write_csv(s, tmp_path / "csv")))
    assert {u["_id"] for u in data.users} == {f"u{r[0]}" for r in s.ratings}
    if s.tags:  # tags.dat (a release may come without tags)
        assert any("Viewers describe it as" in i["description"] for i in data.items)


def test_ml1m_latin1_title(tmp_path: Path) -> None:
    (tmp_path / "movies.dat").write_bytes(
        "7::Cit\xe9 des enfants perdus, La (1995)::Drama\n".encode("latin-1")
    )
    (tmp_path / "ratings.dat").write_text("1::7::5::978300760\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n")
    data = load_movielens(tmp_path)
    assert (
        data.items[0]["title"] == "Cit\xe9 des enfants perdus, La" and data.items[0]["year"] == 1995
    )
    assert data.users[0]["occupation"] == "K-12 student"


def test_quality_and_interests_use_the_datas_own_scale(tmp_path: Path) -> None:
    """ml-1m's 1-5 stars: a movie everyone rated 1 and one everyone rated 5 sit symmetrically
    in [0, 1] (the 0.5-5 scale of ml-latest-small put them at 0.22 and 0.89)."""
    (tmp_path / "movies.dat").write_text("1::Bad (1990)::Drama\n2::Good (1991)::Comedy\n")
    rows = [f"{u}::{m}::{r}::{1000 + u}\n" for u in range(1, 31) for m, r in ((1, 1), (2, 5))]
    (tmp_path / "ratings.dat").write_text("".join(rows))
    data = load_movielens(tmp_path)
    q = {i["_id"]: i["quality"] for i in data.items}
    assert q["m1"] == pytest.approx(0.125) and q["m2"] == pytest.approx(0.875)
    assert data.users[0]["interests"] == ["Comedy"]
    # a 10-point scale: 5 is not a positive there (it was with a fixed threshold of 4)
    (tmp_path / "ratings.dat").write_text(
        "".join(r.replace("::1::1::", "::1::5::").replace("::2::5::", "::2::10::") for r in rows)
    )
    ten = load_movielens(tmp_path)
    assert ten.positive_threshold == 8.0 and ten.users[0]["interests"] == ["Comedy"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "expected movies.csv + ratings.csv"),
        ({"movies.csv": "movieId,title,genres\n1,A (1999),Drama\n"}, "ratings.csv is missing"),
        ({"ratings.dat": "1::1::5::1\n"}, "movies.dat is missing"),
        (
            {"movies.csv": "movieId,title,genres\n1,A,Drama\n", "ratings.csv": "user,movie\n"},
            "lacks userId, movieId, rating, timestamp",
        ),
        (
            {
                "movies.csv": "movieId,title,genres\n1,A,Drama\n",
                "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4,5\n1,1,four,6\n",
            },
            "ratings.csv: line 3: malformed row",
        ),
        (
            {
                "movies.csv": "movieId,title,genres\n1,A,Drama\n",
                "ratings.csv": "userId,movieId,rating,timestamp\n1,1,nan,6\n",
            },
            "ratings.csv: line 2: malformed row",
        ),
        (
            {"movies.dat": "1::A::Drama\n", "ratings.dat": "1::1::5::9\n\n1::1::5\n"},
            "ratings.dat: line 3",
        ),
        ({"movies.dat": "1::A::Drama\n", "ratings.dat": "\n"}, "no ratings (empty dataset)"),
        (
            {
                "movies.csv": "movieId,title,genres\n",
                "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4,5\n",
            },
            "no movies",
        ),
        ({"u.item": "1|A (1995)|x\n", "u.data": "1\t1\t5\t9\n"}, "u.item: line 1: malformed row"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(InvalidInput, match=re.escape(message)):
        load_movielens(tmp_path)
