"""/metrics of ``serve --workers N`` (prometheus-client's multiprocess mode) over workers that
died without stopping: a worker killed with -9 is replaced by uvicorn, but its files stay in
the run's directory. Its counters and histograms must stay (the totals never go back, or
``rate()`` reads a reset), its live gauges must not: in flight, queued and the admission
limit are summed over live workers, the breaker state is per live worker (a dead worker's
last "open" kept the alert on for the rest of the run). What a dead worker dropped stays
counted. Real processes, killed with -9.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from api_support import serve
from prometheus_client.parser import text_string_to_metric_families

from opendisco import Settings
from opendisco.api._metrics import MULTIPROC_ENV, Metrics

_WORKER = """
import sys, time
from opendisco.api._metrics import Metrics
m = Metrics()
m.in_flight.set(7)
m.queued.set(3)
m.concurrency_limit.set(64)
m.breaker_state.set(int(sys.argv[1]))
m.rejected.labels("saturated").inc(5)
m.exposure_unwritten.set(9)
m.exposure_dropped.set(4)
m.served_log_dropped.set(2)
m.latency.labels("/v1/feed", "GET", "200").observe(0.1)
print("ready", flush=True)
time.sleep(60)
"""


def _workers(breakers: tuple[int, ...], env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """Worker processes started side by side, each past its metrics' first values."""
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(b)], stdout=subprocess.PIPE, env=env)
        for b in breakers
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return procs


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    }


def test_a_worker_killed_with_9_leaves_its_counters_not_its_live_gauges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    live, dead = _workers((0, 2), env)  # the dead one's breaker was open
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait(10)
        monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
        got = _samples(Metrics().exposition())
        assert got[("opendisco_api_in_flight", ())] == 7  # the live worker's alone
        assert got[("opendisco_api_queued", ())] == 3
        assert got[("opendisco_api_concurrency_limit", ())] == 64
        breaker = {k: v for k, v in got.items() if k[0] == "opendisco_api_breaker_state"}
        assert breaker == {("opendisco_api_breaker_state", (("pid", str(live.pid)),)): 0}
        # the dead worker's impressions not written are adopted from its journal by a worker
        # started later; what it dropped is lost for good: the "any dropped" alert keeps it
        assert got[("opendisco_api_exposure_unwritten", ())] == 9
        assert got[("opendisco_api_exposure_dropped", ())] == 8
        assert got[("opendisco_api_served_log_dropped", ())] == 4
        # both workers' counts: a dead worker's never leave the totals
        assert got[("opendisco_api_rejected_total", (("reason", "saturated"),))] == 10
        key = (("method", "GET"), ("route", "/v1/feed"), ("status", "200"))
        assert got[("opendisco_api_request_seconds_count", key)] == 2
    finally:
        for p in (live, dead):
            p.kill()
            p.wait(10)


async def test_a_worker_publishes_its_gauges_without_serving_a_scrape(
    api_settings: Settings,
) -> None:
    """Each worker writes its own values; a scrape is served by one of them (Prometheus keeps
    its connection: always the same one). The impressions not written and what was dropped
    were set only by the worker serving the scrape: the others' stayed as of their last
    scrape (0: never), the "unwritten growing" alert blind to them. Now every worker
    publishes them on its own (the app and its backends real; the counts set here stand
    for a flush that failed)."""
    async with serve(api_settings) as client:
        rt = client.app.state.runtime  # type: ignore[attr-defined]
        rt.discovery.served.dropped = 3
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if rt.metrics.registry.get_sample_value("opendisco_api_exposure_dropped") == 3:
                break
            await asyncio.sleep(0.1)
        assert rt.metrics.registry.get_sample_value("opendisco_api_exposure_dropped") == 3
