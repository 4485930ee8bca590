"""The time-based split used by every evaluation (documented contract).

Per user, over the **positives** (ratings >= the dataset's threshold: 4/5 of the top of its
rating scale, i.e. 4 stars on MovieLens; :data:`POSITIVE_THRESHOLD` for bare ratings) sorted
by timestamp (ties broken by a fixed hash of user and item ids: deterministic, and unrelated
to the item; item-id order sent the later-added movies to test wherever timestamps tie):

* the last ``n_test`` positives are the **test** targets;
* the ``n_val`` positives before them are the **validation** targets (used by ``tune`` and
  for picking baseline hyper-parameters such as the EASE lambda);
* everything earlier is **training**.

At least one training positive is always kept: a user with ``p`` positives gets
``min(n_test, p - 1)`` test and ``min(n_val, p - 1 - n_test')`` validation targets; users with
fewer than two positives are dropped (none left is an ``InvalidInput``). Hence every training
timestamp is <= every validation timestamp <= every test timestamp of the same user, and no
held-out interaction is ever in the data a model is fitted on.

Two *stages* are evaluated (:meth:`Split.stage`):

* ``"validation"``: fit on training, score against validation targets (tuning);
* ``"test"``: fit on training + validation, score against test targets (the reported
  figures), i.e. the models see everything before the test period.

Slices of a stage: **cold-start users** have <= ``cold_user_max`` (3) positives in the stage's
fitting data; **cold items** have no positive in the stage's fitting data (the cold-item slice
scores only those held-out targets). Ratings below the threshold are not used for fitting nor
as targets (documented choice: the served pipeline replays positives as ``like`` events).

A user who rated an item more than once counts its **latest** rating only (at its time; equal
times: the later row): a re-rating replaces the earlier one, as MovieLens keeps it. Each
repeat was a positive of its own, so an item fitted on came back as a test target that every
model must exclude (seen), and NDCG@10 fell from 0.073 to 0.016 when a quarter of
ml-latest-small's ratings were repeated a month later.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

import numpy as np
import scipy.sparse as sp

from opendisco._exceptions import InvalidInput

from ._data import POSITIVE_THRESHOLD, Dataset, Ratings

__all__ = ["COLD_USER_MAX", "Split", "Stage", "roll_split", "time_split"]

#: Users with at most this many fitting interactions form the cold-start slice.
COLD_USER_MAX = 3

StageName = Literal["validation", "test"]


@dataclass(frozen=True)
class Stage:
    """What a model is fitted on and scored against, indexed by user/item position."""

    name: str
    users: np.ndarray  # user ids, position = user index
    items: np.ndarray  # item ids, position = item index (the whole catalogue)
    history: list[np.ndarray]  # per user: item indices to fit on, in time order
    targets: list[np.ndarray]  # per user: held-out item indices (may be empty)
    cold_user_max: int = COLD_USER_MAX

    @cached_property
    def matrix(self) -> sp.csr_matrix:
        """Binary user x item CSR matrix of the fitting data."""
        rows = np.repeat(np.arange(len(self.users)), [len(h) for h in self.history])
        cols = np.concatenate(self.history) if self.history else np.empty(0, np.int64)
        data = np.ones(len(cols), dtype=np.float32)
        m = sp.csr_matrix((data, (rows, cols)), shape=(len(self.users), len(self.items)))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.items)}

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {user: i for i, user in enumerate(self.users)}

    @cached_property
    def item_counts(self) -> np.ndarray:
        """Fitting interactions per item (the popularity a model may legitimately see)."""
        return np.asarray(self.matrix.sum(axis=0)).ravel()

    @property
    def evaluable(self) -> np.ndarray:
        """Indices of users having at least one target in this stage."""
        return np.flatnonzero([len(t) > 0 for t in self.targets])

    @property
    def cold_users(self) -> np.ndarray:
        """Boolean mask: users with <= ``cold_user_max`` fitting interactions."""
        return np.array([len(h) <= self.cold_user_max for h in self.history])

    @property
    def cold_items(self) -> np.ndarray:
        """Boolean mask: items without any fitting interaction."""
        return self.item_counts == 0


@dataclass(frozen=True)
class Split:
    """Per-user time-ordered train / validation / test positives (see module docstring)."""

    users: np.ndarray
    items: np.ndarray
    train: list[np.ndarray]
    validation: list[np.ndarray]
    test: list[np.ndarray]
    train_ts: list[np.ndarray]
    validation_ts: list[np.ndarray]
    test_ts: list[np.ndarray]
    n_test: int
    n_val: int
    threshold: float

    def stage(self, name: StageName) -> Stage:
        if name == "validation":
            return Stage("validation", self.users, self.items, self.train, self.validation)
        if name == "test":
            history = [
                np.concatenate([a, b]) for a, b in zip(self.train, self.validation, strict=True)
            ]
            return Stage("test", self.users, self.items, history, self.test)
        raise ValueError(f"unknown stage {name!r} (validation or test)")

    def summary(self) -> dict[str, int | float]:
        return {
            "users": len(self.users),
            "items": len(self.items),
            "train": int(sum(len(t) for t in self.train)),
            "validation": int(sum(len(t) for t in self.validation)),
            "test": int(sum(len(t) for t in self.test)),
            "n_test": self.n_test,
            "n_val": self.n_val,
            "threshold": self.threshold,
        }


def time_split(
    data: Dataset | Ratings,
    *,
    n_test: int = 5,
    n_val: int = 5,
    threshold: float | None = None,
    users: int | None = None,
    seed: int = 0,
) -> Split:
    """Split positives per user by time (module docstring); ``users`` samples that many users.

    The catalogue is every item of the dataset (rated or not), so catalogue coverage and the
    cold-item slice see items nobody interacted with.
    """
    ratings = data.ratings if isinstance(data, Dataset) else data
    if threshold is None:
        threshold = data.threshold if isinstance(data, Dataset) else POSITIVE_THRESHOLD
    catalogue = set(data.items) if isinstance(data, Dataset) else set()
    catalogue.update(ratings.item_ids.tolist())
    items = np.array(sorted(catalogue, key=_natural), dtype=object)
    item_index = {item: i for i, item in enumerate(items)}

    pos = _latest(ratings, item_index).positives(threshold)
    item_idx = np.fromiter((item_index[i] for i in pos.item_ids), np.int64, len(pos))
    ties = np.fromiter(
        (_tie(u, i) for u, i in zip(pos.user_ids, pos.item_ids, strict=True)), np.int64, len(pos)
    )
    order = np.lexsort((item_idx, ties, pos.timestamps, pos.user_ids.astype(str)))
    u_sorted = pos.user_ids[order].astype(str)
    i_sorted, t_sorted = item_idx[order], pos.timestamps[order]
    user_ids, starts = np.unique(u_sorted, return_index=True)
    bounds = [*starts.tolist(), len(u_sorted)]

    keep = [k for k in range(len(user_ids)) if bounds[k + 1] - bounds[k] >= 2]
    if not keep:
        raise InvalidInput(
            f"no user has two positives (ratings >= {threshold:g}) among {len(ratings)} "
            "ratings: nothing to hold out and still fit on"
        )
    if users is not None and users < len(keep):
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(keep, size=users, replace=False).tolist())
    keep.sort(key=lambda k: _natural(user_ids[k]))

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("tr", "va", "te", "trt", "vat", "tet")}
    for k in keep:
        seq, ts = i_sorted[bounds[k] : bounds[k + 1]], t_sorted[bounds[k] : bounds[k + 1]]
        n = len(seq)
        nt = min(n_test, n - 1)
        nv = min(n_val, n - 1 - nt)
        cut_v, cut_t = n - nt - nv, n - nt
        parts["tr"].append(seq[:cut_v])
        parts["va"].append(seq[cut_v:cut_t])
        parts["te"].append(seq[cut_t:])
        parts["trt"].append(ts[:cut_v])
        parts["vat"].append(ts[cut_v:cut_t])
        parts["tet"].append(ts[cut_t:])
    return Split(
        users=np.array([user_ids[k] for k in keep], dtype=object),
        items=items,
        train=parts["tr"],
        validation=parts["va"],
        test=parts["te"],
        train_ts=parts["trt"],
        validation_ts=parts["vat"],
        test_ts=parts["tet"],
        n_test=n_test,
        n_val=n_val,
        threshold=threshold,
    )


def roll_split(split: Split, n: int) -> Split:
    """The split moved one level earlier, for learning from the fitting period alone.

    Per user, the last ``n`` training positives (at most all but one) become the
    ``validation`` targets and the validation targets become the ``test`` ones: its
    ``stage("validation")`` fits on the earlier training positives (the *pre-period*) and
    holds the rolled ones out; its ``stage("test")`` is the original validation stage. Nothing
    of the original test period is in it."""
    if n < 0:
        raise ValueError("n must be >= 0")
    cuts = [max(1, len(t) - n) if len(t) else 0 for t in split.train]
    return replace(
        split,
        train=[t[:c] for t, c in zip(split.train, cuts, strict=True)],
        validation=[t[c:] for t, c in zip(split.train, cuts, strict=True)],
        test=split.validation,
        train_ts=[t[:c] for t, c in zip(split.train_ts, cuts, strict=True)],
        validation_ts=[t[c:] for t, c in zip(split.train_ts, cuts, strict=True)],
        test_ts=split.validation_ts,
        n_test=split.n_val,
        n_val=n,
    )


def _latest(ratings: Ratings, item_index: dict[str, int]) -> Ratings:
    """Each (user, item)'s latest rating (equal times: the later row), in the rows' order."""
    _, ucode = np.unique(ratings.user_ids.astype(str), return_inverse=True)
    icode = np.fromiter((item_index[i] for i in ratings.item_ids), np.int64, len(ratings))
    pair = ucode.astype(np.int64) * len(item_index) + icode
    last = np.argsort(ratings.timestamps, kind="stable")[::-1]  # latest first
    _, first = np.unique(pair[last], return_index=True)
    if len(first) == len(ratings):
        return ratings
    keep = np.sort(last[first])
    return Ratings(
        ratings.user_ids[keep],
        ratings.item_ids[keep],
        ratings.ratings[keep],
        ratings.timestamps[keep],
    )


def _tie(user: str, item: str) -> int:
    """A fixed pseudo-random rank of (user, item) among equal timestamps (63 bits)."""
    digest = hashlib.blake2b(f"{user}\0{item}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) >> 1


def _natural(item: str) -> tuple[str, int, str]:
    """Sort ``m10`` after ``m9`` (prefix, number, rest)."""
    head = item.rstrip("0123456789")
    digits = item[len(head) :]
    return (head, int(digits) if digits else -1, item)
