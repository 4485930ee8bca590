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
workers with it while ``serve`` runs.

The other way round, a worker outlived its supervisor: killed with -9 (or by the OOM killer),
the supervisor left its workers serving on, orphaned — nobody replaced the ones that died
next, and they held the port, so the restarted ``serve`` failed (``[Errno 98] Address already
in use``) for as long as they lived. Each worker now stops itself, gracefully (``SIGTERM``:
requests in flight finished, its lifespan's shutdown run), once its supervisor is gone
(:func:`stop_when_orphaned`)."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import wait
from socket import socket

from uvicorn.config import Config
from uvicorn.supervisors import multiprocess

__all__ = ["WatchedProcess", "stop_when_orphaned", "watched_workers"]

#: how often a worker checks that its supervisor is still its parent
ORPHAN_CHECK_S = 0.5
log = logging.getLogger("uvicorn.error")


def stop_when_orphaned(supervisor: int, every_s: float = ORPHAN_CHECK_S) -> None:
    """Block until this process's parent is no longer ``supervisor`` (it died: the process
    was re-parented), then send this process ``SIGTERM`` (a worker's graceful stop)."""
    while os.getppid() == supervisor:
        time.sleep(every_s)
    log.warning("supervisor [%d] gone: worker [%d] stopping", supervisor, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


class WatchedProcess(multiprocess.Process):
    """A uvicorn worker whose health ping ends when it answers, times out, or the worker
    exits (then None: not alive, replaced by the supervisor); a worker that stops itself
    when its supervisor is gone (:func:`stop_when_orphaned`)."""

    def __init__(self, config: Config, sockets: list[socket]) -> None:
        super().__init__(config, sockets)
        self.supervisor = os.getpid()  # pickled with the worker's target at its start

    def target(self, sockets: list[socket] | None = None) -> None:  # in the worker
        watch = threading.Thread(
            target=stop_when_orphaned, args=(self.supervisor,), name="orphan-watch", daemon=True
        )
        watch.start()
        super().target(sockets)

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
