"""Read after write across two real ``opendisco serve`` processes: a hide, pass and like a
member posted to one process and got a 2xx for is obeyed by the other's very next answer (no
sleep) on every surface, on the next cursor page of a list it served before the write, and
the other way round (the hidden profile's member no longer sees the hider); also when the
client posts the batch to both processes at once (a retry), each event applied once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import free_port, h, start_serve

from opendisco import Settings

MEMBERS = 12  # members with a second page of at least 4 profiles (u1, u2, ...)


@pytest.fixture
def two_processes(
    api_settings: Settings, api_catalogue: dict[str, Any], tmp_path: Path
) -> Iterator[list[str]]:
    ports = [free_port(), free_port()]
    env = {
        **os.environ,
        "OPENDISCO_INDEX_ALIAS": api_settings.index_alias,
        "OPENDISCO_MONGO_DB": api_settings.mongo_db,
        "OPENDISCO_API_DEADLINE_MS": "5000",
        "OPENDISCO_API_CURSOR_SECRET": "test-cursor-secret",  # a cursor pages on either
    }
    procs: list[subprocess.Popen[bytes]] = []

    async def both() -> None:  # started side by side: half the wait
        def one(n: int) -> subprocess.Popen[bytes]:
            state = tmp_path / str(n)
            state.mkdir()
            return start_serve({**env, "OPENDISCO_STATE_DIR": str(state)}, ports[n], state / "log")

        procs.extend(await asyncio.gather(*(asyncio.to_thread(one, n) for n in range(2))))

    try:
        asyncio.run(both())
        yield [f"http://127.0.0.1:{p}" for p in ports]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def test_a_write_answered_2xx_by_one_process_holds_in_the_others_next_answer(
    two_processes: list[str], keys: dict[str, str], api_catalogue: dict[str, Any]
) -> None:
    owner = {it["_id"]: it["owner_id"] for it in api_catalogue["items"]}
    profile_of = {u["_id"]: u["profile_id"] for u in api_catalogue["users"]}
    read, write = h(keys["read"]), h(keys["write"])
    present_before: dict[str, int] = {}
    shown_after: list[Any] = []
    async with (
        httpx.AsyncClient(base_url=two_processes[0], timeout=30) as a,
        httpx.AsyncClient(base_url=two_processes[1], timeout=30) as b,
    ):
        n = 0
        for member in (f"u{i}" for i in range(1, 100)):
            url = f"/v1/users/{member}/recommendations?k=5"
            first = (await b.get(url, headers=read)).json()
            if not first["next_cursor"]:  # nothing to serve: no next page
                continue
            page = f"{url}&cursor={first['next_cursor']}"
            second = [it["id"] for it in (await b.get(page, headers=read)).json()["items"]]
            if len(second) < 4:
                continue
            n += 1
            if n > MEMBERS:
                break
            hid, passed, liked, other = second[:4]
            forbidden = {hid, passed, liked} | {i for i, o in owner.items() if o == owner[hid]}
            surfaces = {
                "next page": page,
                "for_you": f"{url}0",
                "cold_start": f"{url}0&surface=cold_start",
                "trending": f"{url}0&surface=trending",
                "similar": f"/v1/items/{other}/similar?k=50&user_id={member}",
                "search": f"/v1/search?q=profile&k=50&user_id={member}",
            }
            for name, path in surfaces.items():  # the write has something to take out
                got = {it["id"] for it in (await b.get(path, headers=read)).json()["items"]}
                present_before[name] = present_before.get(name, 0) + bool(got & forbidden)
            batch = [
                {"id": uuid.uuid4().hex, "user_id": member, "item_id": i, "type": t}
                for i, t in ((hid, "hide"), (passed, "pass"), (liked, "like"))
            ]
            posts = [a.post("/v1/events", json={"events": batch}, headers=write)]
            if n % 2:  # the same batch to both processes at once
                posts.append(b.post("/v1/events", json={"events": batch}, headers=write))
            bodies = [r.json() for r in await asyncio.gather(*posts)]
            assert all(body.get("in_flight") == 0 and not body["rejected"] for body in bodies), (
                bodies
            )
            assert sum(body["accepted"] for body in bodies) == 3, bodies  # applied once
            for name, path in surfaces.items():
                resp = await b.get(path, headers=read)
                assert resp.status_code == 200, resp.text
                if shown := {it["id"] for it in resp.json()["items"]} & forbidden:
                    shown_after.append((member, name, shown))
            if profile_of.get(owner[hid]):  # the hidden profile's member: the hider is gone too
                resp = await b.get(f"/v1/users/{owner[hid]}/recommendations?k=100", headers=read)
                mine = {i for i, o in owner.items() if o == member}
                if shown := {it["id"] for it in resp.json()["items"]} & mine:
                    shown_after.append((owner[hid], "blocked by", shown))
    assert not shown_after, shown_after
    assert min(present_before.values()) >= MEMBERS // 2, present_before  # not vacuous
