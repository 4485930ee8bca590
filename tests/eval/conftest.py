"""Eval fixtures: the ml-latest-small split and baselines, fitted once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opendisco.eval import Split, read_movielens, time_split
from opendisco.eval._compare import fit_baselines


@pytest.fixture(scope="session")
def ml_split(movielens: Path) -> Split:
    return time_split(read_movielens(movielens), n_test=5, n_val=5)


@pytest.fixture(scope="session")
def ml_baselines(ml_split: Split) -> tuple[dict[str, Any], dict[str, Any]]:
    # small EASE and ALS so the suite stays quick on 2 shared cores
    return fit_baselines(
        ml_split,
        k=10,
        max_items=800,
        als={"factors": 32, "iterations": 8},
        tune_users=list(range(0, len(ml_split.users), 4)),
    )


@pytest.fixture(scope="session")
def eval_settings(settings: Any, run_id: str) -> Iterator[Any]:
    """A namespace of its own inside the session's (replay clears its collections)."""
    from opendisco import clients

    ns = settings.model_copy(
        update={"index_alias": f"t{run_id}eval-items", "mongo_db": f"t{run_id}eval"}
    )
    yield ns
    client = clients.mongo(ns)
    client.drop_database(ns.mongo_db)
    client.close()
