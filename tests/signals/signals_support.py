"""Helpers shared by the signals tests (a module with a unique name, like api_support)."""

from __future__ import annotations

from typing import Any

__all__ = ["Clock", "empty_items"]


class Clock:
    """A monotonic clock the test moves by hand (``clock.t += s``)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def empty_items(os_client: Any, alias: str) -> str:
    """An empty items index behind ``alias`` (returned, for the test to delete): recording
    impressions reads the items' own caps, and an items index it cannot find is a failed read
    (``ExposureStore._caps``), not "every item at the default cap"."""
    index = f"{alias}-v1"
    await os_client.indices.create(index=index, body={"aliases": {alias: {}}})
    return index
