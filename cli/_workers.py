"""uvicorn's worker supervisor, with a health ping that a worker's death ends at once.

``uvicorn.run(..., workers=N)`` supervises the workers from the parent process: every 0.5 s it
pings each in turn over a pipe and waits up to ``timeout_worker_healthcheck``
(``api_worker_healthcheck_s``, 120 s) for the answer; a worker that does not answer, or is
not alive, is killed and replaced. The parent keeps the worker's end of that pipe open too,
so a worker that dies while a ping is outstanding (kill -9, the OOM killer — a process of a
gigabyte takes a while to be torn down, long enough for the next ping to go out) never
closes it: the supervisor waited the whole timeout on a dead worker, checking no other
worker and handling no signal meanwhile (SIGTERM too waited). When the other workers died
as well, the listening socket (the parent's) kept accepting connections nobody answered.

:class:`WatchedProcess` waits for the answer *or* the worker's exit (its process sentinel),
so a death is seen at once; :func:`watched_workers` has uvicorn's supervisor build its
workers with it while ``serve`` runs."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from multiprocessing.connection import wait

from uvicorn.supervisors import multiprocess

__all__ = ["WatchedProcess", "watched_workers"]


class WatchedProcess(multiprocess.Process):
    """A uvicorn worker whose health ping ends when it answers, times out, or the worker
    exits (then None: not alive, replaced by the supervisor)."""

    def _healthcheck(self, timeout: float) -> bool | None:
        try:
            self.parent_conn.send(b"ping")
            ready = wait([self.parent_conn, self.process.sentinel], timeout)
            if self.parent_conn not in ready:  # timed out, or the worker is gone
                return None
            started: bool = self.parent_conn.recv()
            return started
        except (OSError, EOFError, ValueError, pickle.UnpicklingError):
            return None


@contextlib.contextmanager
def watched_workers() -> Iterator[None]:
    """uvicorn's supervisor starts :class:`WatchedProcess` workers within this block (the
    supervisor names its worker class in its module: replaced here, put back after)."""
    saved = multiprocess.Process
    multiprocess.Process = WatchedProcess  # type: ignore[misc]
    try:
        yield
    finally:
        multiprocess.Process = saved  # type: ignore[misc]
