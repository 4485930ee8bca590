"""Several API processes, one deployment: per-key rate limits hold across them (demand-weighted
shares synced through MongoDB), the cursor secret is shared, /metrics covers every worker of
``opendisco serve --workers 2``."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import free_port, h, serve, serve_env, start_serve, stop_serve

from opendisco import Settings
from opendisco.api import RateLimiter, create_key
from opendisco.api._ratesync import RateShares


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


async def test_two_processes_share_one_keys_rate(async_db: Any) -> None:
    """Two workers (own buckets, real store in between) serve one key at 10/s, burst 10, for
    20 simulated seconds; requests land 3:1 on them. Together they grant what one limiter
    would, plus the documented slack (the first interval, before anyone knows of the other,
    and one request's worth of demand per process per interval); separately they would grant
    nearly twice as much."""
    clock = Clock()
    coll = f"rate_usage_{os.getpid()}_{time.monotonic_ns()}"
    workers = []
    for name in ("a", "b"):
        shares = RateShares(async_db, 0.5, process_id=name, clock=clock, elapsed=clock)
        shares.coll = async_db[coll]
        workers.append((shares, RateLimiter(10.0, 10.0, clock=clock)))
    allowed = 0
    for step in range(40):  # 40 sync intervals of 0.5 s; 20 requests per interval (40/s)
        for i in range(20):
            shares, limiter = workers[0] if i % 4 else workers[1]
            shares.note("k")
            allowed += limiter.take("k", share=shares.share("k")) == 0.0
            clock.t += 0.5 / 20
        for shares, _ in workers:
            await shares.sync()
        if step == 0:
            first = allowed
    single = 10 + 10.0 * 20  # burst + rate x duration
    assert first <= 2 * 10 + 10  # before the first sync each grants its own burst
    assert 0.9 * single <= allowed <= single + 10 + 2 * 2 * 40, allowed
    assert allowed < 1.5 * single  # per-process limits would grant ~2x
    a, b = workers[0][0].share("k"), workers[1][0].share("k")
    assert 0.6 < a < 0.85 and 0.15 < b < 0.45  # shares follow demand (3:1)
    # a key used through one process only gets its whole rate there
    assert workers[0][0].share("solo") == 1.0
    await workers[0][0].leave()
    await workers[1][0].sync()
    assert workers[1][0].share("k") == 1.0  # a, gone, no longer takes a share


async def test_a_wall_clock_step_back_leaves_the_demand_and_shares_as_they_were(
    async_db: Any,
) -> None:
    """Two workers of one host, 1:1 traffic, sync in turn; the host's wall clock steps back an
    hour (an NTP correction) between their syncs. The demand is requests over the *elapsed*
    time, a monotonic measure: from the wall clock, the interval was -3600 s (floored to
    1 ms), the second worker published 1000x its demand, and the first then granted ~0.1% of
    the key's rate (its requests refused) until the moving average decayed."""
    wall = Clock()
    coll = f"rate_usage_{os.getpid()}_{time.monotonic_ns()}"
    a, b = (RateShares(async_db, 0.25, process_id=n, clock=wall) for n in ("a", "b"))
    a.coll = b.coll = async_db[coll]
    for step in range(3):
        for shares in (a, b):
            for _ in range(10):
                shares.note("k")
        await asyncio.sleep(0.25)  # real time passes: what the demand is measured over
        wall.t += 0.25
        await a.sync()
        if step == 2:
            wall.t -= 3600.0
        await b.sync()
    await a.sync()
    demand = {n: s._mine["k"] for n, s in (("a", a), ("b", b))}
    assert all(5.0 < d < 80.0 for d in demand.values()), demand  # ~40 requests/s each
    assert 0.3 < a.share("k") < 0.7 and 0.3 < b.share("k") < 0.7, (a.share("k"), b.share("k"))
    await async_db[coll].drop()


async def test_processes_share_the_generated_cursor_secret(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    unset = api_settings.model_copy(update={"api_cursor_secret": None})
    url = "/v1/users/u2/recommendations?k=5"
    async with serve(unset) as one, serve(unset) as two:
        first = (await one.get(url, headers=h(keys["read"]))).json()
        assert first["next_cursor"]
        nxt = await two.get(f"{url}&cursor={first['next_cursor']}", headers=h(keys["read"]))
        assert nxt.status_code == 200, nxt.text  # signed by one process, accepted by the other
        ids = {it["id"] for it in first["items"]}
        assert not ids & {it["id"] for it in nxt.json()["items"]}


@pytest.fixture
def two_workers(api_settings: Settings, api_catalogue: dict[str, Any], tmp_path: Path) -> Any:
    port = free_port()
    env = serve_env(api_settings, tmp_path, OPENDISCO_API_DEADLINE_MS="5000")
    proc = start_serve(env, port, tmp_path / "serve.log", workers=2)
    base = f"http://127.0.0.1:{port}"
    try:
        yield base, tmp_path
    finally:
        stop_serve(proc)
    assert not list((tmp_path / "api-metrics").glob("serve-*")), "metrics dir left behind"


def _served_per_worker(state: Path, status: str) -> dict[str, float]:
    """Requests each worker answered with ``status`` so far, from its own multiprocess file
    (``histogram_<pid>.db``): which worker served a request, without asking the server."""
    from prometheus_client.multiprocess import MultiProcessCollector

    out = {}
    for f in state.glob("api-metrics/serve-*/histogram_*.db"):
        out[f.stem.split("_")[-1]] = sum(
            s.value
            for m in MultiProcessCollector.merge([str(f)], accumulate=True)
            for s in m.samples
            if s.name == "opendisco_api_request_seconds_count"
            and s.labels["status"] == status
            and s.labels["route"].endswith("/recommendations")
        )
    return out


async def _which(state: Path, before: dict[str, float]) -> tuple[str, dict[str, float]]:
    """The worker that answered the one request since ``before`` (its middleware records the
    request just after the response went out: poll briefly), and the counts now."""
    for _ in range(100):
        now = _served_per_worker(state, "200")
        grew = [p for p in now if now[p] > before.get(p, 0.0)]
        if grew:
            (pid,) = grew
            return pid, now
        await asyncio.sleep(0.05)
    raise AssertionError("no worker recorded the request")


def _total(text: str, prefix: str, *needles: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and all(n in line for n in needles)
    )


async def test_serve_with_two_workers(
    two_workers: Any, mongo_db: Any, api_catalogue: dict[str, Any]
) -> None:
    base, state = two_workers
    # 1. one key's rate holds across both workers under concurrent clients
    key, _ = create_key(mongo_db, "workers", ["read"], rate_limit=2.0)  # burst 4
    bad = "/v1/users/u1/recommendations?k=0"  # 422 after auth and the bucket: cheap
    codes: list[int] = []
    t0 = time.monotonic()

    async def client() -> None:  # a new connection every 5 requests: spread over both workers
        while time.monotonic() - t0 < 5.0:
            async with httpx.AsyncClient(base_url=base, timeout=10) as c:
                for _ in range(5):
                    codes.append((await c.get(bad, headers=h(key))).status_code)

    await asyncio.gather(*(client() for _ in range(8)))
    took = time.monotonic() - t0
    allowed = codes.count(422)
    single = 4 + 2.0 * took  # what one limiter grants
    assert set(codes) <= {422, 429}
    assert len(codes) > 3 * single  # the limit was really pressed
    # the documented slack: each worker's own burst before the first sync, one request's
    # worth of demand per worker per sync interval
    assert allowed <= single + 4 + 2 * 2 * took / 0.5 + 2, (allowed, single)
    assert allowed < 1.6 * single  # two unshared workers would grant ~2x
    served = _served_per_worker(state, "422")
    assert len([p for p, n in served.items() if n > 0]) == 2, served  # both workers served

    # 2. a cursor signed by one worker is accepted by the other (the generated shared secret:
    # the fixture sets no api_cursor_secret)
    read, _ = create_key(mongo_db, "workers-read", ["read"])
    url = "/v1/users/u2/recommendations?k=3"
    crossed = 0
    counts = _served_per_worker(state, "200")
    for _ in range(40):
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            first = await c.get(url, headers=h(read))
        assert first.status_code == 200, first.text
        signer, counts = await _which(state, counts)
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            nxt = await c.get(f"{url}&cursor={first.json()['next_cursor']}", headers=h(read))
        assert nxt.status_code == 200, nxt.text
        assert not {i["id"] for i in first.json()["items"]} & {i["id"] for i in nxt.json()["items"]}
        reader, counts = await _which(state, counts)
        crossed += signer != reader
        if crossed >= 2:
            break
    assert crossed >= 2  # pages signed by one worker, continued by the other

    # 3. /metrics answers for both workers, whichever serves it
    for _ in range(4):
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            text = (await c.get("/metrics")).text
        assert _total(text, "opendisco_api_request_seconds_count", 'status="422"') == allowed
        assert _total(text, 'opendisco_api_rejected_total{reason="rate_limited"}') == codes.count(
            429
        )
        recs = _total(text, "opendisco_api_request_seconds_count", 'status="200"', "/recommend")
        assert recs == sum(_served_per_worker(state, "200").values())
        # each live worker's admission limit, summed (16 each at most; fast reads keep it
        # there, more than half of it for both at least)
        assert 16 < _total(text, "opendisco_api_concurrency_limit") <= 2 * 16, text
