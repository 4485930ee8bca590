"""The served-list log (``signals.ServedLog``, the API's side effect) through a MongoDB outage:
the store cut off (a TCP proxy killed, like kill -9; the shared server is never touched)
while lists are logged, then back. (Here beside the other proxy tests: ``TcpProxy``.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from tcp_faults import store_proxy

from opendisco import Settings, clients
from opendisco.rerank import FEATURE_NAMES
from opendisco.signals import SERVED_LISTS, ServedList, ServedLog


def _served(rid: str) -> ServedList:
    return ServedList(
        request_id=rid,
        at=datetime.now(UTC),
        user_id="u1",
        surface="for_you",
        requested_surface="for_you",
        version="v",
        degraded=False,
        k=3,
        feature_names=FEATURE_NAMES,
        X=np.ones((3, len(FEATURE_NAMES))),
        ids=["a", "b", "c"],
        shown=[0, 1, 2],
        propensity=[1.0] * 3,
    )


async def _until(what: Callable[[], bool], timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.1)


async def test_lists_logged_while_the_store_is_down_are_written_when_it_is_back(
    settings: Settings,
) -> None:
    """Before: a failed write lost its batch (logged as "lists lost") and counted it in
    ``failed`` only, so ``opendisco_api_served_log_dropped`` stayed 0: 7 of 743 lists of a
    probe's answers were missing after a 10 s kill -9 of FerretDB, unseen by the alert."""
    name = f"{settings.mongo_db}slo"
    proxy = await store_proxy(settings.mongo_url)
    cut = settings.model_copy(update={"mongo_url": proxy.mongo_url})
    mongo = clients.mongo_async(cut)
    direct = clients.mongo_async(settings)
    try:
        log = ServedLog(mongo[name], max_rows=10, flush_every_s=0.05)
        log.log(_served("before"))
        await _until(lambda: log.written == 1)
        await proxy.kill()
        for j in range(60):  # more than one command's worth
            log.log(_served(f"down-{j:02d}"))
        await _until(lambda: log.failed > 0)  # the flusher tried and the store refused
        assert (log.written, log.pending, log.dropped) == (1, 60, 0)
        await proxy.resume()
        await _until(lambda: log.written == 61)
        assert (log.pending, log.dropped) == (0, 0)
        assert await direct[name][SERVED_LISTS].count_documents({}) == 61
        # the store down at shutdown: drain gives up after one failed write, counting the rest
        await proxy.kill()
        for j in range(3):
            log.log(_served(f"end-{j}"))
        await asyncio.wait_for(log.drain(), 60)
        assert (log.written, log.pending, log.dropped) == (61, 0, 3)
    finally:
        await proxy.close()
        await mongo.close()
        await direct.drop_database(name)
        await direct.close()
