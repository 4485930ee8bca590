"""Engine counter writes that land late, on the real servers: the fault proxy
(``tests/http_faults.py``, ``hang_if``) holds the counters' ``_bulk`` requests unanswered past
the client's timeout — what a paused node (SIGSTOP) does — and lets them reach the engine
afterwards, once the failing call has checked its marks or a retry has taken its events over.
Every impression and like must be counted once whatever the interleaving: the failing call's
check of a write fences its mark (a write that lands after it is a no-op), and a call taking
events over fences the marks of the writes their earlier holders could not check.

The MongoDB writes are held the same way (``tests/tcp_faults.py``, ``hold_if``): counters must
count once, and a whole document written late (a member's state, block document, inbox row)
must not put back an older document over the newer one written meanwhile."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from http_faults import FaultyHttpProxy
from pymongo import UpdateOne
from tcp_faults import TcpProxy, command_on, store_proxy
from test_signals_claims_faults import CAPPED_ITEM, _batch, processors, storm, storm_settings
from test_signals_claims_live import MOVIES, PROFILES, _assert_exact, _Counters

from opendisco import BackendError, SearchBackendError, Settings, _store
from opendisco.serving import HardRules
from opendisco.signals import (
    CAPPED_DOC_ID,
    INBOUND,
    ITEM_EDGES,
    MEMBER_BLOCKS,
    USER_INBOX,
    USER_STATE,
    EventsConfig,
    _graph,
    _store_fence,
)

__all__ = ["storm", "storm_settings"]  # the fixtures, shared with the claims-fault suite

#: the client's timeout in these tests: a held ``_bulk`` fails the call after it
TIMEOUT_S = 1.5
#: the store client's socket timeout in the tests of MongoDB writes held (``TcpProxy.hold_if``)
STORE_TIMEOUT_S = 1.5
#: the member leases in the tests of a writer that keeps them (its fence failed): they lapse
LEASE_S = 2.0


def _bulks(method: str, path: str) -> bool:
    return path.rstrip("/").endswith("_bulk")


async def _until(check: Any, within_s: float = 60.0) -> None:
    """Wait until ``await check()`` is true (a condition, not a sleep)."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def _landed(proxy: FaultyHttpProxy, held: int) -> None:
    """Wait until the ``held`` requests the proxy let through were answered by the engine."""

    async def all_answered() -> bool:
        return sum(proxy.answered.values()) >= held

    await _until(all_answered)


async def _retry(proc: Any, batch: list[dict[str, Any]]) -> Any:
    """The client's retry of ``batch``, tried again (as a client does) while the engine
    fails it: a loaded machine may time a request out at this test's short timeout."""
    for attempt in range(5):
        try:
            return await proc.apply(batch)
        except SearchBackendError:
            if attempt == 4:
                raise
            await proc.drain()


def _liked(batch: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["item_id"] for e in batch if e["type"] == "like")


async def _assert_counted_once(
    proc: Any, db: Any, batch: list[dict[str, Any]], before: dict[str, Any], trend: Any
) -> None:
    counters = _Counters(proc, db)
    await _assert_exact(db, batch, before, await counters.read())
    liked = _liked(batch)
    after = await proc.exposure.read(liked)
    weight = EventsConfig().weights["like"]
    for item, n in liked.items():
        added = after[item].trend - trend[item].trend
        assert added == pytest.approx(n * weight, rel=0.01), (item, added, n)


@pytest.mark.parametrize("retry_first", [False, True], ids=["lands-first", "retry-first"])
@pytest.mark.parametrize("paused", [False, True], ids=["writes-held", "paused"])
async def test_a_counters_bulk_that_lands_after_its_check_counts_once(
    storm: tuple[FaultyHttpProxy, Settings], retry_first: bool, paused: bool
) -> None:
    """The batch's counter writes (its exposure and trend ``_bulk``) are held past the
    client's timeout: the call fails. ``writes-held``: the engine answers the call's check of
    its marks (nothing there yet); ``paused``: it answers nothing until the call gives its
    claims up unchecked, and the retry taking them over must settle the writes itself. The
    held writes then land, before or after the client's retry has written the events."""
    proxy, s = storm
    lease = {"opensearch_timeout": TIMEOUT_S, "events_claim_lease_s": 2 * TIMEOUT_S}
    s = s.model_copy(update=lease)
    async with processors(s, 1) as ([proc], db):
        batch = _batch()
        before = await _Counters(proc, db).read()
        trend = await proc.exposure.read(_liked(batch))
        proxy.hang_if = lambda m, p: _bulks(m, p) and (paused or proxy.hung < 2)
        with pytest.raises(SearchBackendError):
            await proc.apply(batch)
        await proc.drain()  # checked and released, or released unchecked (paused)
        held = proxy.hung
        assert held >= 2 if paused else held == 2  # exposure and trend (and checks)
        proxy.hang_if = None
        if retry_first:  # the retry's writes are not held: they land first
            retry = asyncio.ensure_future(_retry(proc, batch))
            await _until(lambda: _done(retry))
            answered = sum(proxy.answered.values())
            proxy.resume()
            await _landed(proxy, answered + held)
            res = retry.result()
        else:
            answered = sum(proxy.answered.values())
            proxy.resume()
            await _landed(proxy, answered + held)
            res = await _retry(proc, batch)
        assert res.in_flight == 0 and res.rejected == [], res
        await _assert_counted_once(proc, db, batch, before, trend)


async def _done(fut: asyncio.Future[Any]) -> bool:
    return fut.done()


async def test_a_check_the_engine_answers_with_an_error_for_a_counter_is_asked_again(
    storm: tuple[FaultyHttpProxy, Settings],
) -> None:
    """The counter writes are applied and their answers lost; the call's check of them gets a
    shard's rejection (429) for one counter in place of its answer. Not knowing is not "not
    written": the check is asked again until answered, so the retry that takes the events
    over does not count that counter's impressions a second time."""
    proxy, s = storm
    async with processors(s, 1) as ([proc], db):
        batch = _batch()
        liked = _liked(batch)
        seen = sorted({e["item_id"] for e in batch if e["type"] == "impression"} - set(liked))
        item, index = seen[0], proc.exposure.index
        before = await _Counters(proc, db).read()
        trend = await proc.exposure.read(liked)

        def writes(method: str, path: str, body: bytes) -> bool:
            return _bulks(method, path) and b"ctx._source.fenced" not in body

        proxy.lose_answer_if = writes
        # the check's answer for one counter: rejected three times (a bulk and its 2 retries)
        proxy.reject_item = lambda idx, doc_id: (
            idx == index and doc_id == item and proxy.rejected[item] < 3
        )
        with pytest.raises(SearchBackendError):
            await proc.apply(batch)
        await proc.drain()
        assert proxy.lost >= 1 and proxy.rejected[item] >= 1
        proxy.lose_answer_if = proxy.reject_item = None
        res = await _retry(proc, batch)  # the client's retry
        assert res.in_flight == 0 and res.rejected == [], res
        await _assert_counted_once(proc, db, batch, before, trend)


@pytest.mark.parametrize("paused", [False, True], ids=["answer-lost", "paused"])
async def test_an_item_a_landed_write_brought_to_its_cap_joins_the_cap_list(
    storm: tuple[FaultyHttpProxy, Settings], paused: bool
) -> None:
    """Impressions that bring an item to its cap (``cap0``: exposure_cap 3) are written but
    the call never reads the answer: ``answer-lost`` (applied, the connection cut) — its check
    finds them landed; ``paused`` (held past the timeout, then applied) — the retry taking
    the events over finds them landed. Either way no call counts them again, and the item must
    join the engine's cap list all the same: the candidate queries exclude only what is on it
    (a capped member shown is a hard-rule breach)."""
    proxy, s = storm
    lease = {"opensearch_timeout": TIMEOUT_S, "events_claim_lease_s": 2 * TIMEOUT_S}
    s = s.model_copy(update=lease)
    async with processors(s, 1) as ([proc], _db):
        store = proc.exposure
        for doc in (CAPPED_ITEM, CAPPED_DOC_ID):  # the item's counter from zero, off the list
            await store.client.delete(index=store.index, id=doc, ignore=[404], refresh=True)
        before = await proc.exposure.counts([CAPPED_ITEM])
        assert before[CAPPED_ITEM] == 0 and CAPPED_ITEM not in await proc.exposure.capped()
        tag = uuid.uuid4().hex[:6]
        batch = [
            {"id": uuid.uuid4().hex, "type": "impression", "user_id": f"c{tag}{u}"}
            | {"item_id": CAPPED_ITEM}
            for u in range(3)
        ]
        if paused:
            proxy.hang_if = _bulks
        else:
            proxy.lose_answer_if = lambda m, p, body: _bulks(m, p) and b"fenced" not in body
        with pytest.raises(SearchBackendError):
            await proc.apply(batch)
        await proc.drain()
        proxy.hang_if = proxy.lose_answer_if = None
        if paused:
            answered = sum(proxy.answered.values())
            held = proxy.hung
            proxy.resume()
            await _landed(proxy, answered + held)
        res = await _retry(proc, batch)  # the client's retry
        assert (res.recovered, res.in_flight) == (3, 0), res
        assert (await proc.exposure.counts([CAPPED_ITEM]))[CAPPED_ITEM] == 3  # counted once
        assert CAPPED_ITEM in await proc.exposure.capped()


async def test_two_workers_posted_one_batch_on_a_paused_engine_count_it_once(
    storm: tuple[FaultyHttpProxy, Settings],
) -> None:
    """A client posts one batch to two workers while the engine is paused (every ``_bulk``
    held): one claims the events, the other waits and takes them over once the first gives
    them up unchecked; its check of the first one's writes is held too and it fails. The
    engine wakes (every held write and check lands, in any order), and the client's retry on
    either worker counts every impression and like once."""
    proxy, s = storm
    lease = {"opensearch_timeout": TIMEOUT_S, "events_claim_lease_s": 2 * TIMEOUT_S}
    s = s.model_copy(update=lease)
    async with processors(s, 2) as (workers, db):
        batch = _batch()
        before = await _Counters(workers[0], db).read()
        trend = await workers[0].exposure.read(_liked(batch))
        proxy.hang_if = _bulks
        results = await asyncio.gather(*(w.apply(batch) for w in workers), return_exceptions=True)
        assert all(isinstance(r, SearchBackendError) for r in results), results
        for w in workers:
            await w.drain()
        proxy.hang_if = None
        answered, held = sum(proxy.answered.values()), proxy.hung
        proxy.resume()
        await _landed(proxy, answered + held)
        res = await _retry(workers[1], batch)
        assert res.in_flight == 0 and res.rejected == [], res
        await _assert_counted_once(workers[0], db, batch, before, trend)


async def test_a_holder_whose_claims_were_taken_over_does_not_mark_the_events_applied(
    storm_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder stalls (a paused process: its claims' renewals stop, its counters ``_bulk``
    held) past its lease; another worker takes the events over, fences the holder's writes
    and fails before writing its own (its ``_bulk`` refused). The holder wakes: its writes
    are no-ops (fenced) — so it must not mark the events applied, or nobody would count
    them: the impressions under-counted (a capped member shown) and the likes lost — nor
    answer them ``accepted`` (it waits for them, takes them over again or reports them in
    flight). The client's retry then counts every impression and like once."""
    with (
        FaultyHttpProxy(storm_settings.opensearch_url) as slow,
        FaultyHttpProxy(storm_settings.opensearch_url) as other,
    ):
        base = {"events_claim_lease_s": 3.0, "events_claim_wait_s": 30.0}
        s_slow = storm_settings.model_copy(update={**base, "opensearch_url": slow.url})
        s_other = storm_settings.model_copy(update={**base, "opensearch_url": other.url})
        async with processors(s_slow, 1) as ([holder], db), processors(s_other, 1) as ([taker], _):
            batch = _batch()
            before = await _Counters(taker, db).read()
            trend = await taker.exposure.read(_liked(batch))

            async def stalled(*_a: Any, **_k: Any) -> None:  # renewals stop: a paused process
                return None

            for renew in ("_renew_events", "_renew_arbiters"):  # both renewal loops
                monkeypatch.setattr(holder.claims, renew, stalled)
            slow.hang_if = _bulks
            stuck = asyncio.ensure_future(holder.apply(batch))
            await _until(lambda: _hung(slow, 2))
            fences = []  # the taker's fence goes through; its own writes are refused
            other.fail_if = lambda m, p: _bulks(m, p) and len(fences) > 0
            other.lose_answer_if = None

            def first_bulk(m: str, p: str, body: bytes) -> bool:
                if _bulks(m, p) and b"ctx._source.fenced" in body:
                    fences.append(1)
                return False

            other.lose_answer_if = first_bulk
            with pytest.raises(SearchBackendError):
                await taker.apply(batch)  # takes over once the holder's claims expire
            assert fences
            await taker.drain()
            other.fail_if = other.lose_answer_if = None
            slow.resume()
            await asyncio.wait([stuck])  # the holder's writes land (no-ops) and it goes on
            woke = stuck.result()  # not applied by it: not "accepted" (the client would not retry)
            assert woke.accepted == 0, woke
            assert woke.recovered + woke.duplicates + woke.in_flight == len(batch), woke
            res = await _retry(taker, batch)
            assert res.in_flight == 0 and res.rejected == [], res
            await _assert_counted_once(taker, db, batch, before, trend)


async def _hung(proxy: FaultyHttpProxy, n: int) -> bool:
    return proxy.hung >= n


async def _late_answer(proxy: TcpProxy) -> bool:
    return proxy.late_answers >= proxy.held


@pytest.mark.parametrize("retry_first", [False, True], ids=["lands-first", "retry-first"])
@pytest.mark.parametrize("collection", [INBOUND, ITEM_EDGES], ids=["inbound", "graph"])
async def test_a_store_counter_write_that_lands_after_its_check_counts_once(
    storm_settings: Settings, collection: str, retry_first: bool
) -> None:
    """The batch's first write of the inbound counters (or of the co-engagement rows) is held
    on the way to MongoDB (``TcpProxy.hold_if``) past the client's socket timeout: the call
    fails, its check of the write finds nothing, and it gives its claims up. The write then
    reaches the store, before or after the client's retry has taken the events over and
    written them (and, ``retry-first``, another batch liked the same items): every like must
    be counted once (a write of a mark that a check or a later write went past is a no-op; a
    late rewrite of a co-engagement row must not put back the row it read)."""
    proxy = await store_proxy(storm_settings.mongo_url)
    update = {"mongo_url": proxy.mongo_url, "mongo_socket_timeout_s": STORE_TIMEOUT_S}
    try:
        async with processors(storm_settings.model_copy(update=update), 1) as ([proc], db):
            batch, more = _batch(), _batch()
            before = await _Counters(proc, db).read()
            trend = await proc.exposure.read(_liked(batch + more))
            writes = [command_on(c, collection) for c in ("update", "insert")]
            proxy.hold_if = lambda data: proxy.held == 0 and any(w(data) for w in writes)
            with pytest.raises(BackendError):
                await proc.apply(batch)
            await proc.drain()
            assert proxy.held == 1
            if retry_first:
                res = await proc.apply(batch)
                assert (await proc.apply(more)).accepted == len(more)
            proxy.release()
            await _until(lambda: _late_answer(proxy))
            if not retry_first:
                res = await proc.apply(batch)
                assert (await proc.apply(more)).accepted == len(more)
            assert res.in_flight == 0 and res.rejected == [] and res.recovered, res
            await _assert_counted_once(proc, db, batch + more, before, trend)
    finally:
        await proxy.close()


async def test_a_co_engagement_write_cut_part_way_is_not_added_again_to_the_rows_it_wrote(
    storm_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's co-engagement rows are written 4 per command; the second command is held
    past the client's timeout: the rows of the first have the call's mark, the others not, so
    its check (all rows or nothing) answers "not landed". The client's retry takes the events
    over: it must not add again what the first command wrote, nor the held one once it lands."""
    monkeypatch.setattr(_graph, "MAX_WRITES_PER_COMMAND", 4, raising=False)  # before: none
    monkeypatch.setattr(_store, "MAX_WRITES_PER_COMMAND", 4)  # the writes before the fix
    proxy = await store_proxy(storm_settings.mongo_url)
    update = {"mongo_url": proxy.mongo_url, "mongo_socket_timeout_s": STORE_TIMEOUT_S}
    try:
        async with processors(storm_settings.model_copy(update=update), 1) as ([proc], db):
            batch = _batch()
            before = await _Counters(proc, db).read()
            trend = await proc.exposure.read(_liked(batch))
            writes = [command_on(c, ITEM_EDGES) for c in ("update", "insert")]
            seen = Counter[str]()

            def second_write(data: bytes) -> bool:
                if any(w(data) for w in writes):
                    seen["writes"] += 1
                return seen["writes"] == 2 and proxy.held == 0

            proxy.hold_if = second_write
            with pytest.raises(BackendError):
                await proc.apply(batch)
            await proc.drain()
            assert proxy.held == 1
            res = await proc.apply(batch)
            proxy.release()
            await _until(lambda: _late_answer(proxy))
            assert res.in_flight == 0 and res.rejected == [] and res.recovered, res
            await _assert_counted_once(proc, db, batch, before, trend)
    finally:
        await proxy.close()


async def _held_then_newer(
    s: Settings,
    collection: str,
    first: list[dict[str, Any]],
    later: list[dict[str, Any]],
    check: Callable[[Any], Awaitable[None]],
    *,
    retried: bool = True,
    fence_cut: bool = False,
) -> None:
    """Apply ``first`` with its first write to ``collection`` held on the way to MongoDB past
    the client's socket timeout (the call fails; ``fence_cut``: the store unreachable for its
    fence of that write too); then the client's retry of it (unless not ``retried``) and
    ``later``, which write newer documents; then the held write lands, and
    ``check(processor)`` reads what is stored."""
    proxy = await store_proxy(s.mongo_url)
    update = {"mongo_url": proxy.mongo_url, "mongo_socket_timeout_s": STORE_TIMEOUT_S}
    try:
        async with processors(s.model_copy(update=update), 1) as ([proc], _db):
            for store in (proc.states, proc.blocks, proc.users):
                store.lease_s = LEASE_S
            writes = command_on("update", collection)
            proxy.hold_if = lambda data: proxy.held == 0 and writes(data)
            if fence_cut:  # the fence's read of the marks (projection ``{fz: 1}``), retried
                fence = command_on("find", collection)
                proxy.cut_if = lambda data: fence(data) and b"\x10fz\x00\x01\x00" in data
            with pytest.raises(BackendError):
                await proc.apply(first)
            await proc.drain()
            proxy.cut_if = None
            assert proxy.held == 1 and (proxy.cut >= 1) == fence_cut
            if retried:
                assert (await proc.apply(first)).recovered == len(first)
            assert (await proc.apply(later)).accepted == len(later)
            proxy.release()
            await _until(lambda: _late_answer(proxy))
            await check(proc)
    finally:
        await proxy.close()


@pytest.mark.parametrize("fence_cut", [False, True], ids=["fenced", "fence-cut"])
@pytest.mark.parametrize("retried", [True, False], ids=["retried", "next-batch"])
async def test_a_user_state_write_that_lands_late_does_not_undo_a_newer_state(
    storm_settings: Settings, retried: bool, fence_cut: bool
) -> None:
    """A member's state write (``save_many``) is held past the client's timeout: the call
    fails (``fence-cut``: and so does its fence of that write, the store unreachable for it:
    the writer keeps its lease until it lapses, and the next holder fences the write). The
    client's retry (or, ``next-batch``, only the member's next batch) writes a newer state — a
    like and a hide — and then the held write lands. It must not put back the older state: the
    liked and the hidden item would be shown to the member again (the hard rules read
    ``liked``, ``seen`` and ``blocked`` from the state)."""
    user = f"l{uuid.uuid4().hex[:8]}"
    first = [_event(user, "like", MOVIES[0])]
    later = [_event(user, "like", MOVIES[1]), _event(user, "hide", MOVIES[2])]

    async def newer_kept(proc: Any) -> None:
        state = await proc.states.get(user)
        assert MOVIES[1] in state.liked and MOVIES[2] in state.blocked, state
        rules = HardRules.for_member(user, None, state, None)
        assert {MOVIES[1], MOVIES[2]} <= set(rules.exclude_ids)

    await _held_then_newer(
        storm_settings, USER_STATE, first, later, newer_kept, retried=retried, fence_cut=fence_cut
    )


@pytest.mark.parametrize("fence_cut", [False, True], ids=["fenced", "fence-cut"])
@pytest.mark.parametrize("kind", ["hide", "like"], ids=["blocks", "inbox"])
async def test_a_member_row_write_that_lands_late_does_not_undo_a_newer_one(
    storm_settings: Settings, kind: str, fence_cut: bool
) -> None:
    """Member ``a`` hides (blocks its owner) or likes a profile: the write of the owner's
    block document (or inbox row) is held past the client's timeout (``fence-cut``: and its
    fence cut), the client's retry writes it, then member ``c`` does the same, and the held
    write lands. The owner's document must still name ``c``: serving excludes a blocker's
    items from the blocked member's answers from that document alone (the inbox: ``c``'s like
    would be lost from the owner's likers)."""
    tag = uuid.uuid4().hex[:8]
    hide = kind == "hide"
    profile, owner = (PROFILES[1], "person1") if hide else (PROFILES[2], "person2")
    members = {f"a{tag}", f"c{tag}"}
    first, later = ([_event(m, kind, profile)] for m in sorted(members))

    async def newer_kept(proc: Any) -> None:
        if hide:
            named = set((await proc.blocks.get(owner)).either_way)
        else:
            named = set((await proc.users.inboxes_of([owner]))[owner].likers)
        assert members <= named, named

    row = MEMBER_BLOCKS if hide else USER_INBOX
    await _held_then_newer(storm_settings, row, first, later, newer_kept, fence_cut=fence_cut)


def _event(user: str, kind: str, item: str) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "type": kind, "user_id": user, "item_id": item}


@pytest.mark.parametrize("expired", [False, True], ids=["expires-while-waiting", "expired"])
async def test_a_write_of_a_lease_taken_over_is_fenced_before_the_lease_is_freed(
    async_db: Any, expired: bool
) -> None:
    """A holder's whole-document write is on its way and its fence failed: it keeps its lease
    (left to lapse). The next writer takes the lease over once it expired (at its first try,
    ``expired``, or while it waits): it fences the previous holder's token on the documents
    before it frees the lease (whoever inserts it next finds the write fenced), then writes a
    newer document. The held write lands after: refused, the newer document kept."""
    coll, locks = async_db["test_fence_docs"], async_db["test_fence_locks"]
    doc_id = f"m{uuid.uuid4().hex[:8]}"
    take_over = _store_fence.fence_taken_over(coll)
    async with _store.lease(
        locks, [doc_id], lease_s=1.0, wait_s=1.0, what="t", take_over=take_over
    ) as first:
        first.keep()  # its write failed and so did its fence
    late = UpdateOne({"_id": doc_id}, _store_fence.rewrite({"v": "older"}, first.token), True)
    if expired:
        await asyncio.sleep(1.1)
    seen: list[int] = []

    async def fencing(previous: Any) -> None:  # the lease still there while it fences
        seen.append(await locks.count_documents({"_id": doc_id, "owner": first.token}))
        await take_over(previous)

    t0 = time.monotonic()
    async with _store.lease(
        locks, [doc_id], lease_s=5.0, wait_s=3.0, what="t", take_over=fencing
    ) as second:
        assert time.monotonic() - t0 < 2.0
        await _store_fence.replace_fenced(coll, [{"_id": doc_id, "v": "newer"}], held=second)
    assert seen == [1]
    with pytest.raises(BackendError):
        await _store_fence.write_guarded(coll, [late])
    stored = await coll.find_one({"_id": doc_id})
    assert stored is not None and stored["v"] == "newer", stored
    assert first.token in stored[_store_fence.FENCED]
