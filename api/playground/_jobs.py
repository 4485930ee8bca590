"""Offline evaluations of a draft as background jobs, never inside a request's deadline.

``POST .../evaluations`` stores a job (``playground_jobs``: status, progress, result, author,
times) and returns at once; the work — :func:`opendisco.eval.compare_artifacts`, the runner of
``opendisco eval`` over the current and the draft served artifacts — runs in a worker thread
of the process that took the request, one evaluation at a time across processes (a lease in
``playground_locks``: they share the evaluation namespace). The job document is refreshed
every second with the progress (a queued job's too), so any API process can answer
``GET .../jobs/{id}``; a job whose process died, queued or running, stops refreshing and reads
as ``interrupted``. Cancelled (shutdown) jobs
stop at the next batch of users.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from opendisco._backend import backend_errors
from opendisco._exceptions import NotFound, OpenDiscoError, Overloaded
from opendisco._settings import Settings
from opendisco._store import lease, renewing
from opendisco.eval import compare_artifacts
from opendisco.eval._compare import namespaced
from opendisco.eval._runner import finite
from opendisco.serving import Artifacts

from .._runtime import Runtime

__all__ = ["JOBS", "EvalJobs", "eval_settings"]

log = logging.getLogger("opendisco.api.playground")

JOBS = "playground_jobs"
LOCKS = "playground_locks"
#: a queued or running job refreshes its document this often; this long silent = interrupted
_BEAT_S = 1.0
_STALE_S = 60.0
#: the evaluation jobs one API process holds unfinished (one runs at a time, the others wait
#: for the slot): each waiting job polls the slot's lease and beats, so without a bound a
#: script posting evaluations in a loop piled up tasks and store round trips without end
MAX_PENDING = 8


class _Cancelled(Exception):
    """The job was cancelled (the API is shutting down)."""


def eval_settings(settings: Settings) -> Settings:
    """The evaluation's own namespace (never the live one: replayed likes are real events)."""
    return namespaced(settings, settings.playground_eval_namespace or f"{settings.mongo_db}pgeval")


def _iso(ts: Any) -> Any:
    if isinstance(ts, datetime):
        return ts.replace(tzinfo=ts.tzinfo or UTC).isoformat()
    return ts


class EvalJobs:
    """Start, run and read evaluation jobs of one API process."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.coll = rt.db[JOBS]
        self.locks = rt.db[LOCKS]
        self.pending: set[asyncio.Task[None]] = set()
        self.starting = 0  # starts storing their job, their task not yet pending

    @contextlib.contextmanager
    def _place(self) -> Iterator[None]:
        """A place among the ``MAX_PENDING`` held while a start stores its job (before its
        task is pending: starts posted at once all passed a check of the tasks alone)."""
        if len(self.pending) + self.starting >= MAX_PENDING:
            raise Overloaded(
                f"{len(self.pending) + self.starting} evaluations are queued or running in this "
                f"API process (at most {MAX_PENDING}); retry when one has finished",
                retry_after=30.0,
            )
        self.starting += 1
        try:
            yield
        finally:
            self.starting -= 1

    async def start(
        self,
        draft: dict[str, Any],
        current: Artifacts,
        candidate: Artifacts,
        author: dict[str, str],
        *,
        users: int,
        k: int,
        seed: int,
    ) -> dict[str, Any]:
        with self._place():
            settings = self.rt.settings
            now = datetime.now(UTC)
            doc = {
                "_id": "j" + secrets.token_hex(6),
                "draft_id": draft["id"],
                "author": author,
                "status": "queued",
                "phase": "waiting for the evaluation slot",
                "done": 0,
                "total": 0,
                "created_at": now,
                "beat_at": now,
                "params": {
                    "users": users,
                    "k": k,
                    "seed": seed,
                    "dataset": settings.playground_eval_dataset,
                    "surface": draft["surface"] if draft["kind"] == "template" else "for_you",
                    "current": current.name,
                    "draft": candidate.name,
                },
                "result": None,
                "error": None,
            }
            with backend_errors("storing the evaluation job failed"):
                await self.coll.insert_one(doc)
            task = asyncio.create_task(self._run(doc, current, candidate))
            self.rt.tasks.append(task)
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
            task.add_done_callback(lambda t: t in self.rt.tasks and self.rt.tasks.remove(t))
            return self._public(doc)

    async def _set(self, job_id: str, **fields: Any) -> None:
        with backend_errors("updating the evaluation job failed"):
            await self.coll.update_one({"_id": job_id}, {"$set": fields})

    async def _run(self, doc: dict[str, Any], current: Artifacts, candidate: Artifacts) -> None:
        job_id, p = doc["_id"], doc["params"]
        state = {"phase": doc["phase"], "done": 0, "total": 0}
        cancel = threading.Event()

        def progress(phase: str, done: int, total: int) -> None:
            if cancel.is_set():
                raise _Cancelled("the API stopped")
            state.update(phase=phase, done=done, total=total)

        def work() -> dict[str, Any]:
            comparison = compare_artifacts(
                eval_settings(self.rt.settings),
                p["dataset"],
                current,
                candidate,
                users=p["users"],
                k=p["k"],
                seed=p["seed"],
                surface=p["surface"],
                progress=progress,
            )
            return finite(comparison.as_dict())

        # one write of the job document at a time: FerretDB 1.x rewrites the whole document,
        # and a beat beside the "running" write could undo it
        writes = asyncio.Lock()

        async def beat() -> None:
            async with writes:
                await self._set(job_id, beat_at=datetime.now(UTC), **state)

        try:
            # the job beats from the start, queued too: a job whose process died while it
            # waited for the slot read "queued" for ever. A beat that fails (the store cut)
            # is retried at the next one and fails nothing: the work goes on
            async with (
                renewing(beat, _BEAT_S),
                lease(
                    self.locks, ["eval"], lease_s=3600, wait_s=3600, what="playground evaluation"
                ),
            ):
                state["phase"] = "starting"
                async with writes:
                    await self._set(job_id, status="running", started_at=datetime.now(UTC))
                result = await asyncio.to_thread(work)
            await self._set(
                job_id, status="done", result=result, phase="done", finished_at=datetime.now(UTC)
            )
        except asyncio.CancelledError:
            cancel.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(self._set(job_id, status="failed", error="interrupted"))
            raise
        except Exception as exc:
            msg = str(exc) if isinstance(exc, OpenDiscoError) else f"{type(exc).__name__}: {exc}"
            log.warning("playground evaluation %s failed: %s", job_id, msg)
            with contextlib.suppress(Exception):
                await self._set(job_id, status="failed", error=msg, finished_at=datetime.now(UTC))

    @staticmethod
    def _public(doc: dict[str, Any]) -> dict[str, Any]:
        """The job as answered; one queued or running whose document stopped being refreshed
        (its API process died) reads ``interrupted``, in a draft's list too."""
        out = {k: _iso(v) for k, v in doc.items() if k != "_id"}
        out["id"] = doc["_id"]
        beat = doc.get("beat_at")
        if isinstance(beat, datetime) and doc.get("status") in ("queued", "running"):
            beat = beat.replace(tzinfo=beat.tzinfo or UTC)
            if datetime.now(UTC) - beat > timedelta(seconds=_STALE_S):
                out["status"], out["error"] = "interrupted", "its API process stopped"
        return out

    async def get(self, job_id: str) -> dict[str, Any]:
        with backend_errors("reading the evaluation job failed"):
            doc = await self.coll.find_one({"_id": job_id})
        if doc is None:
            raise NotFound(f"no evaluation job {job_id!r}")
        return self._public(doc)

    async def for_draft(self, draft_id: str) -> list[dict[str, Any]]:
        with backend_errors("listing evaluation jobs failed"):
            docs = await self.coll.find({"draft_id": draft_id}, {"result": 0}).to_list(None)
        docs.sort(key=lambda d: d["created_at"], reverse=True)
        return [self._public(d) for d in docs]
