"""kill -9 of ``opendisco sync`` at random points under a concurrent writer loses nothing."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from typing import Any

from ingest_support import OPENDISCO, worker_env

from opendisco import Settings, clients, now_ms
from opendisco.ingest import Embedder, reindex, sync_once, verify


def _writer(
    ingest_settings: Settings, stop: threading.Event, seed: int, counts: dict[str, int]
) -> None:
    rng = random.Random(seed)
    client = clients.mongo(ingest_settings)
    coll = client[ingest_settings.mongo_db][ingest_settings.items_collection]
    template = coll.find_one({"_id": "p0"})
    try:
        while not stop.is_set():
            roll = rng.random()
            doc_id = f"p{rng.randrange(120)}"
            if roll < 0.15:
                new = dict(template, _id=f"w{counts['writes']}", version=1, updated_at=now_ms())
                new["title"] = f"writer insert {rng.randrange(8)}"
                coll.insert_one(new)
            else:
                fields: dict[str, Any] = {"updated_at": now_ms()}
                if roll < 0.25:
                    fields["deleted"] = True
                elif roll < 0.3:
                    fields["deleted"] = False
                elif roll < 0.4:
                    fields["title"] = f"writer title {rng.randrange(8)}"
                else:
                    fields["popularity"] = float(rng.randrange(1000))
                coll.update_one({"_id": doc_id}, {"$set": fields, "$inc": {"version": 1}})
            counts["writes"] += 1
            time.sleep(rng.uniform(0.0, 0.02))
    finally:
        client.close()


async def test_kill_9_under_concurrent_writer_then_verify(
    ingest_settings: Settings, ingest_catalogue: list[dict[str, Any]], embedder: Embedder
) -> None:
    client = clients.async_opensearch(ingest_settings)
    rng = random.Random(99)
    try:
        await reindex(ingest_settings, client=client, embedder=embedder)
        stop, counts = threading.Event(), {"writes": 0}
        writer = threading.Thread(
            target=_writer, args=(ingest_settings, stop, 5, counts), daemon=True
        )
        writer.start()
        kills = 0
        try:
            for _ in range(4):
                proc = subprocess.Popen(
                    [str(OPENDISCO), "sync"],
                    env=worker_env(ingest_settings),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                time.sleep(rng.uniform(2.5, 6.0))
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc.stderr.close()
                kills += 1
        finally:
            stop.set()
            writer.join()
        assert kills == 4 and counts["writes"] > 100
        # after the writer stops: one restart catches up; nothing was lost or resurrected
        proc = subprocess.run(
            [str(OPENDISCO), "sync", "--once"],
            env=worker_env(ingest_settings),
            capture_output=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        report = await verify(ingest_settings, client=client)
        assert report.ok, (report.summary(), report.missing[:5], report.extra[:5], report.stale[:5])
        assert report.expected > 0
        again = await sync_once(ingest_settings, client=client, embedder=embedder)
        assert again.indexed == again.deleted == 0
    finally:
        await client.close()
