"""Helpers shared by the signals tests (a module with a unique name, like api_support)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from opendisco import Settings, clients

__all__ = ["Clock", "clustered_namespace", "empty_items"]


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


@contextlib.contextmanager
def clustered_namespace(
    settings: Settings,
    os_client: Any,
    index_items: Callable[[Settings, list[dict[str, Any]]], str],
    items: list[dict[str, Any]],
    suffix: str,
    **update: Any,
) -> Iterator[Settings]:
    """Settings of ``items`` (the clustered catalogue) in a namespace of their own: the alias
    and the MongoDB database named with ``suffix`` (and ``update``), deleted after."""
    s = settings.model_copy(
        update={
            "index_alias": f"{settings.index_alias}{suffix}",
            "mongo_db": f"{settings.mongo_db}{suffix}",
            **update,
        }
    )
    index_items(s, items)
    try:
        yield s
    finally:
        os_client.indices.delete(
            index=f"{s.index_alias}*", ignore_unavailable=True, expand_wildcards="all"
        )
        with clients.mongo(s) as mc:
            mc.drop_database(s.mongo_db)
