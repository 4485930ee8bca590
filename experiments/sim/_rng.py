"""Common random numbers: a uniform for every (seed, stream, key...) without storing any.

Comparing worlds (all-treated vs all-control, or an experiment vs either) is only sharp when
the same event draws the same random number in every world: a viewer's activity on a day, a
like on an impression, a reply to a proposal. Drawing them from a sequential generator would
tie each number to the order events happen in, which differs between worlds; here each number
is a pure function of what it is about (splitmix64 over the keys), so worlds share them by
construction and nothing of size (pairs × days) is ever materialised.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Stream", "uniform"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


class Stream:
    """Named streams: one per kind of random event (keeps their numbers independent)."""

    ACTIVE = 1  # (viewer, day): the member opens the app that day
    LIKE = 2  # (pair, day): the viewer likes the candidate shown
    REVIEW = 3  # (pair, day sent): the receiver likes the sender back on review
    SHOW = 4  # (pair, day): independent exposure (the no-interference control)
    MESSAGE = 5  # (pair): a new match gets a first message
    REPLY = 6  # (pair): the first message gets a reply
    ORDER = 7  # (pair, day sent): tie-break among proposals in a queue
    CAPACITY = 8  # (member, day): stochastic rounding of a fractional reply capacity


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def uniform(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """U(0, 1) per element of the broadcast ``keys`` (non-negative integers), deterministic
    for ``(seed, stream, keys)``."""
    with np.errstate(over="ignore"):
        z = np.full((), (int(seed) * 0x2545F4914F6CDD1D + int(stream)) % 2**64, dtype=np.uint64)
        z = _mix(z + _GOLDEN)
        for k in keys:
            z = _mix(z ^ (np.asarray(k).astype(np.uint64) * _GOLDEN + _GOLDEN))
        return (z >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)
