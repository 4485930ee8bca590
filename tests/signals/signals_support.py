"""Helpers shared by the signals tests (a module with a unique name, like api_support)."""

from __future__ import annotations

__all__ = ["Clock"]


class Clock:
    """A monotonic clock the test moves by hand (``clock.t += s``)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t
