"""Pure pieces of the API: breaker state machine, token buckets, admission control, what the
breaker may count, cursors, keys."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from api_support import server_receive
from fastapi import FastAPI

from opendisco import (
    AuthError,
    Forbidden,
    InvalidInput,
    Overloaded,
    RateLimited,
    SearchTimeout,
    StoreBackendError,
)
from opendisco.api._admission import Admission
from opendisco.api._breaker import BreakerState, CircuitBreaker
from opendisco.api._cursor import MAX_CURSOR_CHARS, CursorCodec
from opendisco.api._deps import CursorQ
from opendisco.api._edge import Edge
from opendisco.api._errors import error_response
from opendisco.api._keys import ApiKey, ApiKeyStore, hash_secret, new_key, parse_key
from opendisco.api._metrics import Metrics
from opendisco.api._overload import EngineWait, LoopLag, engine_bound
from opendisco.api._ratelimit import RateLimiter, TokenBucket
from opendisco.signals import ServedExposure


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


# --- circuit breaker ------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = Clock()
    br = CircuitBreaker(failure_threshold=3, reset_timeout=5.0, clock=clock)
    for _ in range(2):
        assert br.allow()
        br.record_failure()
    br.record_success()  # resets the consecutive count
    assert br.failures == 0
    for _ in range(2):
        br.record_failure()
    assert br.state is BreakerState.CLOSED
    br.record_failure()
    assert br.state is BreakerState.OPEN
    assert not br.allow()
    assert br.retry_after() == pytest.approx(5.0)


def test_breaker_half_opens_after_timeout_and_closes_on_success() -> None:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    br = CircuitBreaker(
        failure_threshold=1,
        reset_timeout=5.0,
        clock=clock,
        on_change=lambda a, b: changes.append((a.value, b.value)),
    )
    br.record_failure()
    clock.advance(4.9)
    assert not br.allow()
    assert br.state is BreakerState.OPEN
    clock.advance(0.2)
    assert br.allow()  # the probe
    assert br.state is BreakerState.HALF_OPEN
    assert not br.allow()  # only one probe in flight
    br.record_success()
    assert br.state is BreakerState.CLOSED
    assert br.allow() and br.allow()
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_breaker_half_open_failure_reopens_for_a_full_timeout() -> None:
    clock = Clock()
    br = CircuitBreaker(failure_threshold=2, reset_timeout=3.0, clock=clock)
    br.record_failure()
    br.record_failure()
    clock.advance(3.0)
    assert br.allow()
    br.record_failure()
    assert br.state is BreakerState.OPEN
    clock.advance(2.9)
    assert not br.allow()
    clock.advance(0.1)
    assert br.allow()


def test_breaker_release_frees_the_probe_slot() -> None:
    clock = Clock()
    br = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    br.record_failure()
    clock.advance(1.0)
    assert br.allow()
    assert not br.allow()
    br.release()
    assert br.allow()
    assert br.state is BreakerState.HALF_OPEN


def test_breaker_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)


# --- rate limits ----------------------------------------------------------------------


def test_token_bucket_burst_then_rate() -> None:
    b = TokenBucket.full(rate=2.0, burst=3.0, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = b.take(0.0)
    assert wait == pytest.approx(0.5)
    assert b.take(0.5) == 0.0  # one token refilled after 1/rate seconds
    assert b.take(0.5) > 0
    assert b.take(100.0) == 0.0  # refill caps at burst
    assert b.tokens == pytest.approx(2.0)


def test_rate_limiter_is_per_key_and_honours_key_rate() -> None:
    clock = Clock(0.0)
    rl = RateLimiter(rate=1.0, burst=2.0, clock=clock)
    assert rl.take("a") == 0.0 and rl.take("a") == 0.0
    assert rl.take("a") == pytest.approx(1.0)
    assert rl.take("b") == 0.0  # another key has its own bucket
    # own rate 10/s: burst scales to 2 * 10 / 1 = 20
    assert all(rl.take("c", rate=10.0) == 0.0 for _ in range(20))
    assert rl.take("c", rate=10.0) == pytest.approx(0.1)
    # a slow key gets a burst of at least one request
    assert rl.take("d", rate=0.1) == 0.0
    assert rl.take("d", rate=0.1) == pytest.approx(10.0)


async def test_admission_bounds_work_and_hands_slots_over_in_arrival_order() -> None:
    adm = Admission(limit=1, max_wait_s=30.0, max_queue=4)
    assert await adm.acquire() and adm.in_flight == 1
    b = asyncio.ensure_future(adm.acquire())
    c = asyncio.ensure_future(adm.acquire())
    await asyncio.sleep(0)
    assert adm.waiting == 2 and not b.done()
    adm.release()  # the slot goes to b (first in), not back to the pool
    assert await b is True and adm.in_flight == 1 and not c.done()
    adm.release()
    assert await c is True
    adm.release()
    assert adm.in_flight == 0 and adm.waiting == 0


async def test_admission_sheds_when_the_queue_is_full_or_the_wait_is_over() -> None:
    full = Admission(limit=1, max_wait_s=30.0, max_queue=1)
    assert await full.acquire()
    waiting = asyncio.ensure_future(full.acquire())
    await asyncio.sleep(0)
    assert await full.acquire() is False  # queue full: shed at once
    full.release()
    assert await waiting is True
    slow = Admission(limit=1, max_wait_s=0.01, max_queue=8)
    assert await slow.acquire()
    assert await slow.acquire() is False  # waited max_wait_s: shed
    assert slow.waiting == 0
    slow.release()
    assert slow.in_flight == 0
    assert await Admission(limit=1, max_wait_s=0).acquire()  # no queue at all
    no_queue = Admission(limit=1, max_wait_s=0)
    await no_queue.acquire()
    assert await no_queue.acquire() is False


async def test_a_cancelled_waiter_leaks_no_slot() -> None:
    adm = Admission(limit=1, max_wait_s=30.0)
    assert await adm.acquire()
    waiter = asyncio.ensure_future(adm.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    adm.release()
    assert adm.in_flight == 0 and adm.waiting == 0
    with pytest.raises(ValueError):
        Admission(limit=0)


def test_admission_limit_adapts_to_service_time_within_bounds() -> None:
    adm = Admission(limit=8, target_s=0.4, min_limit=2, smoothing=1.0)  # no averaging
    assert adm.limit == 8
    for _ in range(5):
        adm.observe(0.9)  # slower than the target: multiplicative decrease
    assert adm.limit == 4  # 8 * 0.9**5 = 4.7
    for _ in range(30):
        adm.observe(0.9)
    assert adm.limit == 2  # never under min_limit
    for _ in range(200):
        adm.observe(0.1)  # fast: +1/limit each, so about +1 per limit's worth
    assert adm.limit == 8  # never over max
    fixed = Admission(limit=3)
    fixed.observe(10.0)
    assert fixed.limit == 3  # no target: a fixed limit
    smooth = Admission(limit=8, target_s=0.4)
    smooth.observe(0.1)
    smooth.observe(1.0)  # one slow request: the average (0.28) is still within the target
    assert smooth.limit == 8 and smooth.service_s == pytest.approx(0.28)
    with pytest.raises(ValueError):
        Admission(limit=2, min_limit=3)


async def test_a_lowered_limit_drains_through_releases() -> None:
    adm = Admission(limit=2, max_wait_s=30.0, target_s=0.1, smoothing=1.0)
    assert await adm.acquire() and await adm.acquire()
    waiter = asyncio.ensure_future(adm.acquire())
    await asyncio.sleep(0)
    for _ in range(10):
        adm.observe(1.0)  # the limit falls to 1 while 2 are in flight
    adm.release()  # 2 -> 1 in flight: no hand-over while over the limit
    assert not waiter.done() and adm.in_flight == 1
    adm.release()
    assert await waiter is True and adm.in_flight == 1


async def test_the_admission_limit_is_exported_as_it_shrinks_and_grows_back() -> None:
    """``opendisco_api_concurrency_limit`` is the limit admission applies, read through the
    edge as a scrape would: it falls while reads are slower than the target and recovers
    when they are fast again (the operator saw neither before: no such metric)."""
    metrics = Metrics()
    admission = Admission(8, target_s=0.1, smoothing=1.0)
    edge = Edge(_Timed(), admission, get_metrics=lambda: metrics)

    def exported() -> float | None:
        return metrics.registry.get_sample_value("opendisco_api_concurrency_limit")

    await _through(edge, "/v1/x", 0.0)
    assert exported() == 8
    seen = []
    for _ in range(4):  # slower than the target: 8 -> 7.2 -> 6.5 -> 5.8 -> 5.2
        await _through(edge, "/v1/x", 0.15)
        seen.append(exported())
    assert seen == [7, 6, 5, 5] and admission.limit == 5
    await _through(edge, "/metrics", 0.0)  # not admission's: a scrape reads the limit as is
    assert exported() == 5
    for _ in range(30):  # fast again: +1/limit each
        await _through(edge, "/v1/x", 0.0)
    assert exported() == 8 == admission.limit


class _Timed:
    """An ASGI app that answers 200 after ``scope["sleep"]`` seconds."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(scope["sleep"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def _through(edge: Edge, path: str, sleep: float) -> None:
    answered = asyncio.Event()

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body":
            answered.set()

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "sleep": sleep}
    await asyncio.wait_for(edge(scope, server_receive(answered), send), 5)


def test_engine_wait_measures_the_current_uninterrupted_engine_wait() -> None:
    clock = Clock(0.0)
    wait = EngineWait(clock)
    assert wait.current() == 0.0
    wait.enter()
    clock.advance(0.2)
    wait.enter()  # a second concurrent engine call
    clock.advance(0.1)
    wait.leave()
    assert wait.current() == pytest.approx(0.3)  # still waiting on the first one
    wait.leave()
    assert wait.current() == 0.0 and wait.waited == pytest.approx(0.3)
    clock.advance(1.0)  # local work: not the engine's time
    assert wait.current() == 0.0
    wait.enter()
    clock.advance(0.6)
    wait.leave(cancelled=True)  # the deadline cancelled the call: its wait is remembered
    assert wait.current() == pytest.approx(0.6)


SILENT = 10.0  # seconds since the engine answered anything


def test_only_an_engine_that_kept_a_responsive_process_waiting_is_a_failure() -> None:
    clock = Clock(0.0)
    lag = LoopLag(window_s=1.0, clock=clock)
    wait = EngineWait(clock)
    wait.enter()
    clock.advance(0.5)
    assert engine_bound(wait, lag, 0.8, SILENT)  # engine pending 0.5 s of a 0.8 s deadline
    assert not engine_bound(wait, lag, 1.2, SILENT)  # mostly our own time
    lag.record(clock(), 0.3)  # the event loop woke up 300 ms late: we were the bottleneck
    assert not engine_bound(wait, lag, 0.8, SILENT)
    clock.advance(1.5)  # the lag is past the window
    assert lag.recent() == 0.0 and engine_bound(wait, lag, 0.8, SILENT)
    wait.leave()
    assert not engine_bound(wait, lag, 0.8, SILENT)  # not waiting on the engine at all
    wait.enter()
    clock.advance(0.7)
    wait.leave(cancelled=True)
    assert engine_bound(wait, lag, 0.8, SILENT)  # cut short by the deadline while waiting
    assert not engine_bound(wait, lag, 0.8, 0.05)  # the engine answered others: slow, not down


# --- cursors --------------------------------------------------------------------------


def test_cursor_round_trip_and_binding() -> None:
    clock = Clock(1_000_000.0)
    codec = CursorCodec(b"s3cret", ttl_s=60, max_ids=5, clock=clock)
    cur = codec.encode("u1", "for_you", ["a", "b"])
    assert cur is not None
    assert codec.decode(cur, "u1", "for_you") == ["a", "b"]
    with pytest.raises(InvalidInput):
        codec.decode(cur, "u2", "for_you")
    with pytest.raises(InvalidInput):
        codec.decode(cur, "u1", "trending")
    with pytest.raises(InvalidInput):
        CursorCodec(b"other", clock=clock).decode(cur, "u1", "for_you")
    body, sig = cur.split(".")
    with pytest.raises(InvalidInput):
        codec.decode(body[:-2] + "AA." + sig, "u1", "for_you")
    for junk in ("", ".", "x", "x.y", "%%%.%%%"):
        with pytest.raises(InvalidInput):
            codec.decode(junk, "u1", "for_you")
    clock.advance(61)
    with pytest.raises(InvalidInput, match="expired"):
        codec.decode(cur, "u1", "for_you")
    assert codec.encode("u1", "for_you", list("abcde")) is None  # session full


async def test_every_cursor_issued_is_one_the_route_accepts() -> None:
    # item ids may be 512 characters: 999 served ids of 100 signed to a 78,746-character
    # cursor, which the next page's request was refused with (422: over CursorQ's limit)
    app = FastAPI()

    @app.get("/page")
    async def page(cursor: CursorQ = None) -> dict[str, int]:
        return {"n": len(codec.decode(cursor or "", "u1", "for_you"))}

    codec = CursorCodec(b"s3cret", max_ids=1000)
    rng = random.Random(3)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for length, n in ((100, 999), (512, 300), (512, 100), (8, 999)):
            ids = ["".join(rng.choices("0123456789abcdef", k=length)) for _ in range(n)]
            cur = codec.encode("u1", "for_you", ids)
            if cur is None:  # the session ends as when it served max_ids items
                assert len(ids) * length > MAX_CURSOR_CHARS
                continue
            assert len(cur) <= MAX_CURSOR_CHARS
            r = await client.get("/page", params={"cursor": cur})
            assert r.status_code == 200 and r.json() == {"n": n}, (length, n, r.text[:200])


# --- keys -----------------------------------------------------------------------------


def test_new_key_stores_only_a_salted_hash() -> None:
    plain, doc = new_key("app", ["read", "write"])
    key_id, secret = parse_key(plain)
    assert doc["_id"] == key_id
    assert secret not in str(doc)
    assert doc["hash"] == hash_secret(doc["salt"], secret)
    _, doc2 = new_key("app", ["read"])
    assert doc2["salt"] != doc["salt"]
    with pytest.raises(InvalidInput):
        new_key("x", ["root"])
    with pytest.raises(InvalidInput):
        new_key("x", [])


@pytest.mark.parametrize(
    "token", [None, "", "abc", "odk_short_x", "xyz_0123456789ab_secret", "odk_0123456789ab_"]
)
def test_parse_key_rejects_malformed(token: str | None) -> None:
    with pytest.raises(AuthError):
        parse_key(token)


def test_scopes_admin_implies_all() -> None:
    admin = ApiKey("k", "n", frozenset({"admin"}))
    reader = ApiKey("k", "n", frozenset({"read"}))
    ApiKeyStore.require(admin, "write")
    ApiKeyStore.require(reader, "read")
    with pytest.raises(Forbidden):
        ApiKeyStore.require(reader, "write")


def test_freeze_startup_heap_moves_live_objects_out_of_collection() -> None:
    import gc

    from opendisco.api._gc import freeze_startup_heap

    before = gc.get_threshold()
    try:
        gc.unfreeze()
        keep = [[i] for i in range(1000)]  # survives: must end up frozen
        freeze_startup_heap(12_345)
        assert gc.get_freeze_count() >= len(keep)
        assert gc.get_threshold()[0] == 12_345 and gc.get_threshold()[1:] == before[1:]
        freeze_startup_heap(0)  # 0 keeps the threshold
        assert gc.get_threshold()[0] == 12_345
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_the_heap_of_an_encoder_loaded_after_start_up_is_frozen_once_it_lands() -> None:
    import gc

    from opendisco.api._gc import freeze_when_loaded

    loop = asyncio.get_running_loop()
    try:
        gc.unfreeze()
        failed, loading = loop.create_future(), loop.create_future()
        freeze_when_loaded(failed)
        freeze_when_loaded(loading)
        failed.set_exception(OSError("no model"))
        await asyncio.sleep(0)
        assert gc.get_freeze_count() == 0  # a failed load freezes nothing
        model = [[i] for i in range(1000)]  # what the load built
        assert gc.get_freeze_count() == 0
        loading.set_result(model)
        await asyncio.sleep(0)
        assert gc.get_freeze_count() >= len(model)
        assert failed.exception()  # (retrieved)
    finally:
        gc.unfreeze()


# --- fallback segments ------------------------------------------------------------------


def test_age_bands_cover_the_range() -> None:
    from opendisco.api._segments import age_bands

    assert age_bands(19, 64, 10) == [(19, 28), (29, 38), (39, 48), (49, 58), (59, 64)]
    assert age_bands(30, 30, 5) == [(30, 30)]


def test_segments_a_member_may_find_someone_in() -> None:
    from opendisco.api._segments import ALL, Segment
    from opendisco.serving import HardRules

    member = HardRules.for_member(
        "u", {"gender": "m", "age": 30, "pref_genders": ["f"], "pref_age_min": 25,
              "pref_age_max": 35}, None, None,
    )  # fmt: skip
    assert ALL.relevant(member) and ALL.params() == {}
    assert Segment("f", (29, 38)).relevant(member)
    assert Segment("f", (19, 28)).relevant(member)  # overlaps 25..35
    assert not Segment("f", (39, 48)).relevant(member)
    assert not Segment("m", (29, 38)).relevant(member)
    anyone = HardRules.for_member("u", {}, None, None)
    assert Segment("x", (59, 64)).relevant(anyone)
    assert Segment("f", (29, 38)).params() == {
        "viewer_pref_genders": ["f"],
        "viewer_pref_age_min": 29,
        "viewer_pref_age_max": 38,
    }


class _Exposure:
    async def capped(self) -> list[str]:
        return []


class _TimedLists:
    """SegmentLists' scheduling with the engine calls replaced (what is fetched is tested
    live in test_api_safety; this is only when and how many at once)."""

    def __init__(self, **kw: Any) -> None:
        from opendisco.api._segments import ALL, Segment, SegmentLists

        segs = [ALL, *(Segment(g, (19, 28)) for g in "fmx")]
        outer = self

        class Lists(SegmentLists):
            async def segments(self) -> list[Segment]:
                return segs

            async def _list(self, segment: Segment) -> tuple[list[Any], str]:
                outer.active += 1
                outer.peak = max(outer.peak, outer.active)
                await asyncio.sleep(0.02)
                outer.active -= 1
                if outer.fail is not None and segment.gender == outer.fail:
                    raise RuntimeError("engine error")
                return [segment.key], "v1"

        self.active = self.peak = 0
        self.fail: str | None = None
        self.segs = segs
        exposure = _Exposure()
        served = ServedExposure(exposure, 1.0)  # type: ignore[arg-type]
        disc = SimpleNamespace(exposure=exposure, served=served)
        self.lists = Lists(disc, **kw)  # type: ignore[arg-type]


async def test_fallback_refresh_is_spread_once_lists_are_served() -> None:
    """The first refresh fetches ``parallel`` lists at once (nothing to serve yet); later
    ones fetch one list at a time, spread over ``spread_s`` (no burst of k-sized queries in
    front of the requests being served), and a failed list keeps its previous one."""
    t = _TimedLists(parallel=4)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await t.lists.refresh(spread_s=0.4)
    assert t.peak == 4 and loop.time() - t0 < 0.3
    first = t.lists.snapshot
    assert first is not None and set(first.lists) == set(t.segs)
    t.peak, t.fail = 0, "m"
    t0 = loop.time()
    assert not await t.lists.refresh(spread_s=0.4)
    assert t.peak == 1 and loop.time() - t0 >= 0.4
    assert t.lists.snapshot is not None and set(t.lists.snapshot.lists) == set(t.segs)
    t.peak = 0
    assert not await t.lists.refresh()  # no spread asked: as before, `parallel` at once
    assert t.peak == 4


async def test_a_stored_cap_list_dated_ahead_of_this_clock_is_not_fresh(async_db: Any) -> None:
    """A cold process's fallback checks caps against the list another process stored
    (``fallback_caps``) while it is at most two refresh periods old. One dated an hour ahead
    (stored before this host's clock stepped back, or by a host whose clock runs ahead) has
    no known age: read as -1 h old, it counted as fresh for an hour and more, its caps as
    checked (``exposure_cap`` not in ``degraded_rules``, short pages filled from it)."""
    from datetime import UTC, datetime, timedelta

    from opendisco.api._fallback import Fallback
    from opendisco.api._segments import CAPS

    alias = f"caps-ahead-{random.getrandbits(40):x}"
    settings = SimpleNamespace(index_alias=alias)
    lists = SimpleNamespace(snapshot=None)
    try:
        for ahead_s, fresh in ((0.0, True), (0.5, True), (3600.0, False), (-3600.0, False)):
            at = datetime.now(UTC) + timedelta(seconds=ahead_s)
            doc = {"_id": alias, "ids": ["x-capped"], "at": at}
            await async_db[CAPS].replace_one({"_id": alias}, doc, upsert=True)
            fb = Fallback(SimpleNamespace(settings=settings), async_db, lists)  # type: ignore[arg-type]
            assert await fb._cap_list() == (frozenset({"x-capped"}), fresh), ahead_s
    finally:
        await async_db[CAPS].delete_one({"_id": alias})


def test_a_retuned_bucket_keeps_its_tokens() -> None:
    b = TokenBucket.full(rate=10.0, burst=10.0, now=0.0)
    assert all(b.take(0.0) == 0.0 for _ in range(8))
    b.retune(rate=5.0, burst=5.0, now=0.0)  # a smaller share: not refilled to the new burst
    assert b.tokens == pytest.approx(2.0)
    b.retune(rate=10.0, burst=20.0, now=1.0)  # earned at the old rate until now, capped
    assert b.tokens == pytest.approx(5.0)


def test_rate_limiter_grants_its_share_of_a_key() -> None:
    clock = Clock(0.0)
    rl = RateLimiter(rate=10.0, burst=10.0, clock=clock)
    allowed = sum(rl.take("k", share=0.5) == 0.0 for _ in range(20))
    assert allowed == 5  # half the burst
    clock.advance(1.0)
    assert sum(rl.take("k", share=0.5) == 0.0 for _ in range(20)) == 5  # half the rate


@pytest.mark.parametrize(
    ("exc", "status", "retry_after"),
    [
        (StoreBackendError("mongo down"), 503, "1"),
        (SearchTimeout("engine slow"), 503, "1"),
        (Overloaded("full", retry_after=2.2), 503, "3"),
        (RateLimited("slow down", retry_after=0.1), 429, "1"),
        (RateLimited("a key of 1e-300/s", retry_after=1e300), 429, "3600"),
        (InvalidInput("bad"), 422, None),
    ],
)
def test_every_429_and_503_says_when_to_retry(
    exc: Exception, status: int, retry_after: str | None
) -> None:
    r = error_response(exc, "rid-1")  # type: ignore[arg-type]
    assert r.status_code == status and r.headers["X-Request-ID"] == "rid-1"
    assert r.headers.get("Retry-After") == retry_after


def test_a_backend_failure_does_not_tell_the_client_its_hosts_or_indices() -> None:
    exc = StoreBackendError("127.0.0.1:27017: [Errno 111] Connection refused (db opendisco)")
    body = error_response(exc, "rid-2").body.decode()
    assert "27017" not in body and "opendisco" not in body and "StoreBackendError" in body


async def test_shutdown_stops_a_background_loop_that_swallowed_its_cancellation() -> None:
    """The MongoDB driver can swallow a cancellation (an operation cancelled while its
    connection fails returns instead; seen after a store outage). A background loop whose
    one cancellation was swallowed ran on after the app's shutdown, on closed clients, for
    the rest of the process (in the test session: through every later test)."""
    from opendisco._cancel import stop_tasks

    inside, swallowed, rounds = asyncio.Event(), [], [0]

    async def store_call() -> None:
        inside.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed.append(True)  # the driver's way, once: the call just returns

    async def background_loop() -> None:
        while True:
            await store_call()
            rounds[0] += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(background_loop())
    await inside.wait()  # the first cancellation lands inside the store call
    assert await stop_tasks([task], timeout_s=5.0) == set()
    assert swallowed and task.cancelled()
    ended = rounds[0]
    await asyncio.sleep(0.1)
    assert rounds[0] == ended  # stopped for good
