"""Evaluation jobs across processes: what a job reads as when the process running it is gone
(a real API-side process, killed with -9), on the real MongoDB."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest

from opendisco import Overloaded, Settings, clients
from opendisco._store import lease
from opendisco.api.playground import EvalJobs, _jobs
from opendisco.serving import Artifacts

#: a process that queues one evaluation job (the slot is held elsewhere), prints its id and
#: waits for the slot
_QUEUE_ONE = """
import asyncio, types
from opendisco import Overloaded, Settings, clients
from opendisco.api.playground import EvalJobs
from opendisco.serving import Artifacts

async def main():
    s = Settings()
    rt = types.SimpleNamespace(settings=s, db=clients.mongo_async(s)[s.mongo_db], tasks=[])
    draft = {"id": "d-killed", "kind": "params", "surface": "for_you"}
    job = await EvalJobs(rt).start(
        draft, Artifacts(), Artifacts(), {"name": "t"}, users=2, k=5, seed=0
    )
    print(job["id"], flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture
async def jobs_db(settings: Settings) -> Any:
    own = settings.model_copy(update={"mongo_db": f"{settings.mongo_db}pgjobs"})
    client = clients.mongo_async(own)
    yield own, client[own.mongo_db]
    await client.drop_database(own.mongo_db)
    await client.close()


async def test_a_queued_job_whose_process_died_reads_interrupted(
    jobs_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job waits ("queued") while another evaluation holds the slot. It read "queued" for
    ever once its process was gone: only a running job's silence was noticed. A queued job
    beats too, so it reads "queued" while its process lives and "interrupted" once it died."""
    settings, db = jobs_db
    monkeypatch.setattr(_jobs, "_STALE_S", 4.0)
    reader = EvalJobs(SimpleNamespace(settings=settings, db=db, tasks=[]))  # type: ignore[arg-type]
    env = {
        **os.environ,
        "OPENDISCO_MONGO_URL": settings.mongo_url,
        "OPENDISCO_MONGO_DB": settings.mongo_db,
    }
    async with lease(db[_jobs.LOCKS], ["eval"], lease_s=60, wait_s=10, what="the test"):
        proc = subprocess.Popen(
            [sys.executable, "-c", _QUEUE_ONE], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            job_id = (await asyncio.to_thread(proc.stdout.readline)).strip()
            assert job_id, "the queuing process printed no job id"
            await asyncio.sleep(_jobs._STALE_S + 1.5)
            live = await reader.get(job_id)
            assert live["status"] == "queued", live
        finally:
            proc.kill()
            proc.wait()
        deadline = time.monotonic() + _jobs._STALE_S + 5
        while (job := await reader.get(job_id))["status"] == "queued":
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.5)
    assert job["status"] == "interrupted", job
    assert "stopped" in job["error"]
    # the draft's list of evaluations (what the page shows) says so too
    assert [j["status"] for j in await reader.for_draft("d-killed")] == ["interrupted"]


async def test_evaluations_waiting_for_the_slot_are_bounded(jobs_db: Any) -> None:
    """Every evaluation posted while one runs waited for the slot, each a task polling the
    slot's lease: a script posting in a loop piled them up without end. Past
    ``MAX_PENDING`` unfinished jobs in the process, a new one is refused (503, retry later)
    and stores nothing; once one finishes, a new one is taken again."""
    settings, db = jobs_db
    rt = SimpleNamespace(settings=settings, db=db, tasks=[])
    jobs = EvalJobs(rt)  # type: ignore[arg-type]
    draft = {"id": "d-many", "kind": "params", "surface": "for_you"}

    async def start() -> dict[str, Any]:
        return await jobs.start(
            draft, Artifacts(), Artifacts(), {"name": "t"}, users=2, k=5, seed=0
        )

    async with asyncio.timeout(60):  # a failure here must not hang the suite
        async with lease(db[_jobs.LOCKS], ["eval"], lease_s=60, wait_s=10, what="the test"):
            try:
                # posted at once: each start stores its job before its task exists, so a check
                # of the running tasks alone let every start in that window through
                got = await asyncio.gather(
                    *(start() for _ in range(_jobs.MAX_PENDING + 3)), return_exceptions=True
                )
                started = [j for j in got if isinstance(j, dict)]
                refused = [e for e in got if isinstance(e, Overloaded)]
                assert (len(started), len(refused)) == (_jobs.MAX_PENDING, 3), got
                with pytest.raises(Overloaded, match="at most"):
                    await start()
                assert await db[_jobs.JOBS].count_documents({}) == _jobs.MAX_PENDING
                assert {(await jobs.get(j["id"]))["status"] for j in started} == {"queued"}
                rt.tasks[0].cancel()
                await asyncio.gather(rt.tasks[0], return_exceptions=True)
                await start()
            finally:
                for task in rt.tasks:
                    task.cancel()
                _, stuck = await asyncio.wait(list(rt.tasks), timeout=30)
                assert not stuck, f"{len(stuck)} jobs did not stop when cancelled"
