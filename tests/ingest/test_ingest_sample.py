"""Sample catalogues: seeded marketplace, MovieLens (both formats), writing into MongoDB."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import movielens_layouts as L
import pytest

from opendisco import InvalidInput, Settings
from opendisco.ingest import generate_marketplace, load_movielens, validate_item, write_sample
from opendisco.ingest._movielens_files import split_title


def test_marketplace_is_seeded_and_two_sided() -> None:
    a = generate_marketplace(200, seed=5)
    assert a == generate_marketplace(200, seed=5)
    assert a != generate_marketplace(200, seed=6)
    items, users = a
    assert len(items) == len(users) == 200
    for item in items:
        assert item["kind"] == "profile" and item["description"] and item["tags"]
        assert item["location"] and item["created_at"] <= item["updated_at"]
        assert item["gender"] in ("f", "m", "x") and item["pref_genders"]
        assert item["pref_age_min"] <= item["age"] <= item["pref_age_max"]
    assert len({i["description"] for i in items}) > 150  # bios vary
    for user in users:
        assert set(user) >= {"_id", "interests", "location", "gender", "age", "created_at"}


def test_movielens_latest_small(movielens: Path) -> None:
    """ml-latest-small, or whichever CSV release ``$OPENDISCO_MOVIELENS`` names: the
    expectations come from its files (ml-latest-small: 9,742 movies, 610 users, 100,836
    ratings, Toy Story (1995) first)."""
    data = load_movielens(movielens)
    want = L.facts(movielens)
    csv_releases = ("ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m", "movielens-csv")
    assert data.format in csv_releases
    assert (len(data.items), len(data.users), len(data.ratings)) == (
        want.movies,
        want.users,
        want.ratings,
    )
    mid, title, genres = want.first_movie
    first = next(i for i in data.items if i["_id"] == f"m{mid}")
    assert (first["title"], first["year"]) == split_title(title)
    assert set(first["tags"]) >= set(genres.split("|")) - {"(no genres listed)"}
    assert first["popularity"] == want.ratings_of_first_movie
    if L.published_small(movielens):  # its published figures, not only what its files say
        assert (want.movies, want.users, want.ratings) == (9742, 610, 100836)
        assert (first["title"], first["year"]) == ("Toy Story", 1995)
        assert "Animation" in first["tags"] and first["popularity"] > 100
    uid, iid, rating, ts = data.ratings[0]
    assert uid.startswith("u") and iid.startswith("m") and data.scale[0] <= rating <= data.scale[1]
    assert ts.tzinfo is UTC and all(
        data.ratings[i][3] <= data.ratings[i + 1][3] for i in range(1000)
    )
    assert sum(1 for i in data.items if not _valid(i)) == 0


def test_movielens_without_derived_fields(movielens: Path) -> None:
    full = {i["_id"]: i for i in load_movielens(movielens).items}
    bare = {i["_id"]: i for i in load_movielens(movielens, derived=False).items}
    assert set(bare) == set(full)
    mid, title, genres = L.facts(movielens).first_movie  # ml-latest-small: Toy Story (1995)
    toy, toy_full = bare[f"m{mid}"], full[f"m{mid}"]
    assert toy["popularity"] == 0.0 and toy["quality"] == 0.0
    year = split_title(title)[1]
    released = datetime(year if year and 1000 <= year <= 9999 else 1970, 1, 1, tzinfo=UTC)
    assert toy["created_at"] == toy["updated_at"] == released
    assert "Viewers describe" not in toy["description"]
    assert toy["tags"] == [g for g in genres.split("|") if g != "(no genres listed)"]
    assert set(toy["tags"]) <= set(toy_full["tags"])
    if (movielens / "tags.csv").is_file():  # ml-latest-small tags Toy Story
        assert any("Viewers describe" in i["description"] for i in full.values())
    assert all(_valid(i) for i in bare.values())


def _valid(item: dict[str, Any]) -> bool:
    validate_item(item)
    return True


def test_movielens_100k_format(tmp_path: Path) -> None:
    flags = ["0"] * 19
    action = flags.copy()
    action[1] = "1"
    comedy = flags.copy()
    comedy[5] = "1"
    (tmp_path / "u.item").write_text(
        "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(comedy) + "\n"
        "2|GoldenEye (1995)|01-Jan-1995||http://y|" + "|".join(action) + "\n",
        encoding="latin-1",
    )
    (tmp_path / "u.data").write_text("7\t1\t5\t881250949\n7\t2\t3\t881250950\n8\t2\t4\t881250951\n")
    (tmp_path / "u.user").write_text("7|24|M|technician|85711\n8|53|F|other|94043\n")
    data = load_movielens(tmp_path)
    assert data.format == "ml-100k"
    assert [i["_id"] for i in data.items] == ["m1", "m2"]
    assert data.items[1]["tags"] == ["Action"] and data.items[1]["popularity"] == 2.0
    assert data.ratings[0] == ("u7", "m1", 5.0, datetime.fromtimestamp(881250949, UTC))
    u8 = next(u for u in data.users if u["_id"] == "u8")
    assert (u8["gender"], u8["age"], u8["interests"]) == ("f", 53, ["Action"])


def test_unknown_layout_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        load_movielens(tmp_path)


def test_write_sample_bumps_versions(ingest_settings: Settings, mongo_db: Any) -> None:
    items, users = generate_marketplace(20, seed=1)
    assert write_sample(ingest_settings, items, users) == {"items": 20, "users": 20}
    coll = mongo_db[ingest_settings.items_collection]
    assert coll.count_documents({"version": 1}) == 20
    before = coll.find_one({"_id": "p3"})["updated_at"]
    write_sample(ingest_settings, items[:5])
    assert coll.count_documents({"version": 2}) == 5
    assert coll.find_one({"_id": "p3"})["updated_at"] > before
