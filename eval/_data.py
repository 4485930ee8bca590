"""MovieLens as evaluation data: ratings as aligned arrays plus the item documents.

Parsing is ``opendisco.ingest.load_movielens`` (one parser for the project: ml-latest-small
and ml-100k layouts, ids ``m<movieId>``/``u<userId>``, items in the MongoDB ``items`` schema of
docs/architecture.md); this module only converts its result. Timestamps are Unix seconds
(UTC). Items are loaded with ``derived=False``: nothing learnt from ratings or tags.csv (that
would leak the held-out period into the served pipeline); the replay sets popularity and
quality from the training split only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from opendisco.ingest import load_movielens, positive_threshold

__all__ = ["POSITIVE_THRESHOLD", "Dataset", "Ratings", "load_dataset", "read_movielens"]

#: A rating at or above this value is a positive interaction on MovieLens' 5-star scales; a
#: loaded dataset carries its own (:attr:`Dataset.threshold`, from its rating scale).
POSITIVE_THRESHOLD = positive_threshold(5.0)


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
    ``threshold`` is the positive threshold of its rating scale (4/5 of its top rating).
    """

    name: str
    ratings: Ratings
    items: dict[str, dict[str, Any]] = field(repr=False)
    users: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    threshold: float = POSITIVE_THRESHOLD


def _unix(value: Any) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp())
    return int(value)


def load_dataset(path: str | Path) -> Dataset:
    """The MovieLens release at ``path`` (any layout ``opendisco.ingest.load_movielens``
    reads); its positive threshold comes from its rating scale."""

    path = Path(path).resolve()  # "." is named after its directory
    data = load_movielens(path, derived=False)  # no item field learnt from held-out ratings
    items = {doc["_id"]: dict(doc) for doc in data.items}
    ratings = Ratings.from_rows([tuple(r) for r in data.ratings])
    return Dataset(path.name, ratings, items, threshold=data.positive_threshold)


#: the name the evaluation code and tests use
read_movielens = load_dataset
