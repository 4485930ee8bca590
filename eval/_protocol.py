"""The one contract every evaluated model implements (baselines and the served pipeline)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Recommender"]


@runtime_checkable
class Recommender(Protocol):
    """Anything that ranks item ids for users.

    ``recommend_batch(user_ids, k, exclude)`` returns, for each user id, at most ``k`` item
    ids best first, none of them in ``exclude[i]`` (the user's already-seen items). The
    runner also drops excluded / duplicate / unknown ids defensively, so a sloppy model is
    penalised rather than crashing the run.
    """

    name: str

    def recommend_batch(
        self, user_ids: Sequence[str], k: int, exclude: Sequence[Collection[str]]
    ) -> list[list[str]]: ...
