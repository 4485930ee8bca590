"""The engine itself killed with -9 and paused (SIGSTOP … SIGCONT) under traffic, on a private
one-node cluster (``opendisco.services.scratch_cluster``: its own ports and state; the shared
servers are never touched) beside the shared FerretDB (a database of its own), with the
product's real processes: ``opendisco serve`` and an ``opendisco sync`` worker as child
processes, the events applied by the API's processor.

While the engine is gone and after it is back:

- every answer is a page that obeys the hard rule (the catalogue of ``test_api_safety``: one
  violator per rule at the top of the ranking; plus what the member did and what MongoDB
  changed during the outage) or a 503 with ``Retry-After``; never a 500, never an answer
  later than the deadline allows;
- event batches posted during the outage (a client retrying on 503) are each applied exactly
  once once the engine is back: exposure counts, inbound likes, member states, blocks; a
  batch posted once (its 503 never retried) is applied by the API process itself soon after;
- every page served, degraded or not, counts once toward its profiles' exposure;
- the sync worker catches up: the index matches MongoDB (``verify``);
- the API answers from the pipeline again, without a restart, within a bounded time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import free_port, h, start_serve
from event_counts import (
    all_applied,
    all_stored,
    applied_once,
    counters,
    event_batch,
    post_settled,
    until,
)
from test_api_safety import GONE, READS_FOR_V, V, W, _violations, build_safe

from opendisco import Settings, clients, now_ms
from opendisco.ingest import verify
from opendisco.services import FAST_START, OpenSearchService, scratch_cluster

# one JVM started (~20-60 s by load), then killed and restarted and paused: ~2-4 min
pytestmark = pytest.mark.slow

OPENDISCO = Path(sys.executable).with_name("opendisco")
DEADLINE_MS = 2000
#: slack over the deadline a loaded 2-core machine (a JVM restarting on it) may add to an
#: answer: the request's own work after the deadline cut it (the degraded answer)
SLACK_S = 8.0
#: the product processes' OpenSearch client timeout: shorter than the pause
OPENSEARCH_TIMEOUT_S = 8.0
#: profiles no reader is ever shown (V may not see them, W sees "nopref" alone): the events'
#: items, so the served pages' own impressions do not move their counters
EVENT_ITEMS = ["x-gender", "x-old", "x-wants-women", "x-wants-older"]
#: the one profile W may see (on every page of W's): its exposure counts the pages served
SHOWN = "nopref"
WATCHED = [*EVENT_ITEMS, SHOWN]
OWNERS = {i: f"o-{i}" for i in EVENT_ITEMS}


@pytest.fixture(scope="module")
def engine(live_services: Settings, run_id: str) -> Iterator[tuple[Settings, OpenSearchService]]:
    ns = live_services.model_copy(
        update={
            "index_alias": f"t{run_id}-ek-items",
            "mongo_db": f"t{run_id}ek",
            "explore_rate": 0.0,
            "api_fallback_refresh_s": 1.0,
            "api_fallback_store_timeout_ms": 3000,
            # the readers ask for the same pages for minutes: only the capped profile's own
            # cap (x-capped, 1) may take a profile off them
            "exposure_default_cap": 1_000_000,
        }
    )
    with scratch_cluster(ns, name=f"t{run_id}ek", nodes=1, heap="512m", java_opts=FAST_START) as (
        settings,
        svc,
    ):
        yield settings, svc
    with clients.mongo(ns) as mc:
        mc.drop_database(ns.mongo_db)


@pytest.fixture(scope="module")
async def catalogue(engine: tuple[Settings, OpenSearchService], model: Any) -> dict[str, Any]:
    return await build_safe(engine[0], model, "ek")


def _env(settings: Settings, state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OPENDISCO_OPENSEARCH_URL": settings.opensearch_url,
        "OPENDISCO_OPENSEARCH_NODES": "1",
        "OPENDISCO_MONGO_DB": settings.mongo_db,
        "OPENDISCO_INDEX_ALIAS": settings.index_alias,
        "OPENDISCO_STATE_DIR": str(state),
        "OPENDISCO_EXPLORE_RATE": "0",
        "OPENDISCO_API_DEADLINE_MS": str(DEADLINE_MS),
        # the calls a paused engine holds time out within the pause (HOLD_S), as they do in
        # a longer pause at the default 30 s
        "OPENDISCO_OPENSEARCH_TIMEOUT": str(OPENSEARCH_TIMEOUT_S),
        "OPENDISCO_API_RATE_LIMIT": "10000",
        "OPENDISCO_API_RATE_BURST": "10000",
        "OPENDISCO_API_CURSOR_SECRET": "engine-kills",
        "OPENDISCO_API_FALLBACK_REFRESH_S": "1",
        "OPENDISCO_API_FALLBACK_STORE_TIMEOUT_MS": "3000",
        "OPENDISCO_EXPOSURE_DEFAULT_CAP": str(settings.exposure_default_cap),
        "OPENDISCO_SYNC_POLL_INTERVAL": "0.2",
        "OPENDISCO_SYNC_LEASE_SECONDS": "5",
    }


@dataclass
class Product:
    """``opendisco serve`` and ``opendisco sync`` running against the scratch engine."""

    settings: Settings
    svc: OpenSearchService
    base: str
    keys: dict[str, str]
    api: subprocess.Popen[bytes]
    sync: subprocess.Popen[bytes]
    logs: Path

    def alive(self) -> None:
        for name, proc in (("serve", self.api), ("sync", self.sync)):
            assert proc.poll() is None, f"{name} exited: {self.log(name)}"

    def log(self, name: str) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.logs.glob(f"{name}*.log"))
        )


@pytest.fixture(scope="module")
def product(
    engine: tuple[Settings, OpenSearchService],
    catalogue: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Product]:
    settings, svc = engine
    state = tmp_path_factory.mktemp("engine-kills")
    env = _env(settings, state)
    port = free_port()
    api = start_serve(env, port, state / "serve.log")
    sync = subprocess.Popen(
        [str(OPENDISCO), "sync", "--log-level", "info"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(state / "sync.log").open("wb"),
    )
    try:
        yield Product(
            settings, svc, f"http://127.0.0.1:{port}", catalogue["keys"], api, sync, state
        )
    finally:
        for proc in (api, sync):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


@dataclass
class Answer:
    url: str
    start: float
    end: float
    status: int
    retry_after: str | None = None
    degraded: bool = True
    ids: list[str] = field(default_factory=list)
    text: str = ""


@dataclass
class Traffic:
    """Readers of V's and W's pages, and writers posting event batches until each is settled
    (a client that retries on 503 / 429 / a cut connection), while the engine is killed or
    paused. ``forbidden_since`` maps an id to the time after which no answer may show it (an
    action of V's answered, or a change MongoDB was given)."""

    product: Product
    answers: list[Answer] = field(default_factory=list)
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    posts: list[tuple[float, float, int, str]] = field(default_factory=list)
    forbidden_since: dict[str, float] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self, client: httpx.AsyncClient, url: str, key: str) -> Answer:
        start = time.monotonic()
        try:
            resp = await client.get(url, headers=h(key))
        except httpx.HTTPError as exc:  # a hung answer: the client's timeout
            ans = Answer(url, start, time.monotonic(), 0, text=repr(exc))
        else:
            ans = Answer(url, start, time.monotonic(), resp.status_code, text=resp.text[:500])
            ans.retry_after = resp.headers.get("retry-after")
            if resp.status_code == 200:
                body = resp.json()
                ans.degraded = bool(body["degraded"])
                ans.ids = [it["id"] for it in body["items"]]
        self.answers.append(ans)
        return ans

    async def reader(self, i: int) -> None:
        urls = [*READS_FOR_V, f"/v1/users/{W}/recommendations?k=10"]
        key = self.product.keys["read"]
        async with httpx.AsyncClient(base_url=self.product.base, timeout=60) as client:
            n = i
            while not self.stop.is_set():
                await self.read(client, urls[n % len(urls)], key)
                n += 1
                await asyncio.sleep(0.1)

    async def post_settled(self, client: httpx.AsyncClient, batch: list[dict[str, Any]]) -> float:
        return await post_settled(client, batch, self.product.keys["write"], self.posts)

    async def writer(self) -> None:
        async with httpx.AsyncClient(base_url=self.product.base, timeout=60) as client:
            while not self.stop.is_set():
                batch = event_batch(EVENT_ITEMS)
                self.batches.append(batch)
                await self.post_settled(client, batch)
                await asyncio.sleep(0.3)

    def check(self) -> None:
        """Every answer: a page obeying the hard rule, or 503 + Retry-After; none late."""
        late = SLACK_S + DEADLINE_MS / 1000
        bad = []
        for a in self.answers:
            if a.status == 503 and a.retry_after:
                continue
            if a.status != 200:
                bad.append((a.url, a.status, a.text))
                continue
            extra = {i for i, t in self.forbidden_since.items() if a.start > t}
            if broken := _violations(a.ids, extra):
                bad.append((a.url, a.degraded, broken))
            if a.end - a.start > late:
                bad.append((a.url, "late", round(a.end - a.start, 1)))
        assert not bad, bad[:10]
        posts_late = [p for p in self.posts if p[1] - p[0] > late + 10]
        assert not posts_late, posts_late[:5]


async def post_once(
    client: httpx.AsyncClient, key: str
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    batch = event_batch(EVENT_ITEMS)
    try:
        r = await client.post("/v1/events", json={"events": batch}, headers=h(key))
    except httpx.HTTPError as exc:
        return batch, 0, {"error": repr(exc)}
    assert r.status_code in (200, 503), (r.status_code, r.text)
    return batch, r.status_code, r.json()


async def pipeline_back(product: Product, traffic: Traffic, since: float) -> float:
    """The time of the first non-degraded answer for V that started after ``since``."""

    async def served() -> bool:
        return any(
            a.start > since and a.status == 200 and not a.degraded and a.url in READS_FOR_V
            for a in traffic.answers
        )

    return await until(served, 90, "the API never answered from the pipeline again")


async def index_matches_store(settings: Settings) -> None:
    async def matches() -> bool:
        report = await verify(settings)
        return report.ok

    await until(matches, 90, "the sync worker never caught up")


def mongo_changes(settings: Settings, traffic: Traffic, fault: str) -> None:
    """What MongoDB is told while the engine is away: a member's profile paused and another's
    deleted (tombstone) — never shown from then on: the pages are re-checked against MongoDB —
    and the titles of the other profiles edited (synced once the engine is back)."""
    bump = {"$inc": {"version": 1}}
    with clients.mongo(settings) as mc:
        items = mc[settings.mongo_db][settings.items_collection]
        for pid, change in ((GONE, {"available": False}), (DELETED[fault], {"deleted": True})):
            items.update_one({"_id": pid}, {"$set": {**change, "updated_at": now_ms()}, **bump})
            traffic.forbidden_since[pid] = time.monotonic()
        for i in range(20):
            title = f"edited {uuid.uuid4().hex[:6]}"
            items.update_one(
                {"_id": f"ok{i}"}, {"$set": {"title": title, "updated_at": now_ms()}, **bump}
            )


async def engine_answers(settings: Settings) -> bool:
    osc = clients.async_opensearch(settings, max_retries=0)
    try:
        health = await osc.cluster.health(request_timeout=5)
        return health["status"] in ("yellow", "green")
    finally:
        await osc.close()


@dataclass
class Outage:
    """One engine outage under traffic, and what the tests check of it."""

    fault: str
    traffic: Traffic
    once: list[tuple[list[dict[str, Any]], int, dict[str, Any]]]
    before: dict[str, Counter[str]]
    down_at: float
    back_at: float
    served_at: float


#: the engine's outage: killed -9 (restarted after this long), or paused (SIGCONT after)
HOLD_S = {"kill": 8.0, "pause": 20.0}
#: V's actions during each outage: a like, a hide (its owner blocked) and an impression
ACTS = {"kill": ("ok5", "ok7", "ok9"), "pause": ("ok11", "ok13", "ok15")}
#: a profile deleted (tombstone) in MongoDB during each outage
DELETED = {"kill": "ok25", "pause": "ok27"}


async def v_acts(product: Product, traffic: Traffic, fault: str) -> None:
    """V likes, hides and is shown three profiles during the outage (a client retrying until
    each is applied): no answer that starts after that may show them."""
    kinds = ("like", "hide", "impression")
    async with httpx.AsyncClient(base_url=product.base, timeout=60) as client:
        for kind, item in zip(kinds, ACTS[fault], strict=True):
            ev = {"id": uuid.uuid4().hex, "type": kind, "user_id": V, "item_id": item}
            traffic.forbidden_since[item] = await traffic.post_settled(client, [ev])


async def run_outage(product: Product, fault: str) -> Outage:
    settings, svc = product.settings, product.svc
    product.alive()
    traffic = Traffic(product)
    once: list[tuple[list[dict[str, Any]], int, dict[str, Any]]] = []
    before = await counters(settings, WATCHED)
    node = svc.nodes[0]
    tasks = [asyncio.create_task(traffic.reader(i)) for i in range(2)]
    tasks.append(asyncio.create_task(traffic.writer()))
    try:
        await until(
            lambda: _true(len(traffic.answers) >= 10 and len(traffic.batches) >= 2),
            120,
            "no steady traffic",
        )
        down_at = time.monotonic()
        svc.signal(node, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        try:
            await asyncio.sleep(2)
            mongo_changes(settings, traffic, fault)
            tasks.append(asyncio.create_task(v_acts(product, traffic, fault)))
            async with httpx.AsyncClient(base_url=product.base, timeout=60) as client:
                for _ in range(2):  # posted once each: a client that does not retry
                    once.append(await post_once(client, product.keys["write"]))
            await asyncio.sleep(max(0.0, down_at + HOLD_S[fault] - time.monotonic()))
        finally:
            if fault == "kill":
                await asyncio.to_thread(svc.up)
            else:
                svc.signal(node, signal.SIGCONT)
        back_at = await until(lambda: engine_answers(settings), 180, "engine not back")
        served_at = await pipeline_back(product, traffic, back_at)
        down = [a for a in traffic.answers if down_at + 1 < a.start < back_at]
        assert len(down) >= 5, len(down)
        await tasks[-1]  # V's actions settled
        for task in tasks[:-1]:
            assert not task.done(), task.exception()
    finally:
        traffic.stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    print(
        f"\n{fault}: {len(traffic.answers)} answers {Counter(a.status for a in traffic.answers)}, "
        f"degraded {sum(a.degraded for a in traffic.answers if a.status == 200)}, "
        f"posts {Counter(p[2] for p in traffic.posts)}, engine back {back_at - down_at:.1f} s "
        f"after the fault, pipeline {served_at - back_at:.1f} s after the engine, slowest "
        f"answer {max(a.end - a.start for a in traffic.answers):.1f} s, one-shot posts "
        f"{[status for _, status, _ in once]}"
    )
    return Outage(fault, traffic, once, before, down_at, back_at, served_at)


async def _true(value: bool) -> bool:
    return value


@pytest.fixture(scope="module", params=["kill", "pause"])
async def outage(request: pytest.FixtureRequest, product: Product) -> Outage:
    """The engine killed with -9 mid-traffic and restarted, or paused (SIGSTOP) 20 s and
    resumed, once for all the tests of that fault."""
    return await run_outage(product, request.param)


def test_every_answer_is_a_page_obeying_the_hard_rule_or_503_with_retry_after(
    outage: Outage,
) -> None:
    """Never a 500, a hung or late answer, or a profile the member may not see: the
    catalogue's violators, nor what V liked, hid or was shown during the outage once that
    was applied, nor the profile paused in MongoDB during it."""
    outage.traffic.check()


def test_the_api_answers_from_the_pipeline_again_without_a_restart(
    outage: Outage, product: Product
) -> None:
    product.alive()  # the same serve and sync processes, never restarted
    assert outage.served_at - outage.back_at <= 60


async def test_events_posted_once_during_the_outage_are_applied_without_a_retry(
    outage: Outage, product: Product
) -> None:
    """A batch posted once while the engine was away (answered 503, its client gone for good)
    is applied by the API process itself soon after the engine is back. (It was left to the
    recovery sweep: applied 270 s after the engine was back.)"""
    settings = product.settings
    stored = [b for b, _, _ in outage.once if await all_stored(settings, b)]
    assert stored, outage.once  # the outage reached the events' effects, not their reads
    remaining = outage.back_at + 60 - time.monotonic()
    await until(lambda: all_applied(settings, stored), max(remaining, 1.0), "not applied")


async def test_events_posted_during_the_outage_are_applied_exactly_once(
    outage: Outage, product: Product
) -> None:
    """Batches a client posted until they were settled, and the batches posted once (those
    not stored at all were answered 503, so the client posts them again): every event counted
    once — impressions, likes, members' states and blocks."""
    traffic = outage.traffic
    async with httpx.AsyncClient(base_url=product.base, timeout=60) as client:
        for batch, _, _ in outage.once:
            if not await all_applied(product.settings, [batch]):
                await traffic.post_settled(client, batch)
    batches = traffic.batches + [b for b, _, _ in outage.once]
    await applied_once(product.settings, batches, outage.before, OWNERS)


async def test_every_page_served_counts_once_toward_exposure(
    outage: Outage, product: Product
) -> None:
    """The served impressions of the pages answered before, during and after the outage
    (degraded ones too) reach the counters once each: the flushes that failed while the
    engine was away are sent again, and a part the engine applied before it died is not
    counted twice."""
    served = sum(SHOWN in a.ids for a in outage.traffic.answers)
    assert served >= 10

    async def counted() -> bool:
        now = await counters(product.settings, WATCHED)
        return now["exposure"][SHOWN] - outage.before["exposure"][SHOWN] == served

    try:
        await until(counted, 60, "")
    except AssertionError:
        now = await counters(product.settings, WATCHED)
        got = now["exposure"][SHOWN] - outage.before["exposure"][SHOWN]
        raise AssertionError(f"{got} impressions counted of {served} served") from None


async def test_the_sync_worker_catches_up(outage: Outage, product: Product) -> None:
    """The titles edited, the profile paused and the one deleted in MongoDB during the outage
    reach the index:
    it matches MongoDB again (``verify``), the worker never restarted."""
    await index_matches_store(product.settings)
    product.alive()
