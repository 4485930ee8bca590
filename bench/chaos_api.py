"""The API under bench/chaos.py: ``opendisco serve --workers 2`` as a child process, one of
its workers killed -9, or the whole of it — its supervisor — killed -9 and started again on
the same port once its workers have stopped (they stop themselves: ``cli/_workers.py``; they
served on, orphaned, holding the port, and the restart failed with "Address already in
use")."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from api_support import start_serve
from test_api_worker_kill import _running, _workers

__all__ = ["Api"]

#: how long the workers of a killed supervisor may take to stop (a graceful stop)
ORPHANS_S = 30.0


class Api:
    """``opendisco serve`` of the soak: started, its workers or itself killed -9."""

    def __init__(self, env: Mapping[str, str], port: int, log: Path, workers: int = 2) -> None:
        self.env, self.port, self.log, self.workers = env, port, log, workers
        self.proc: subprocess.Popen[bytes] = start_serve(env, port, log, workers, encoder=False)

    def kill_worker(self, rng: random.Random) -> bool:
        """Kill -9 one worker while all are up (killing the last one serving is an outage,
        not a fault to survive); whether one was killed."""
        log = self.log.read_text(errors="replace")
        pids = _workers(self.proc.pid)
        if len(pids) < self.workers or log.count("startup complete") < log.count("Started server"):
            return False
        os.kill(rng.choice(pids), signal.SIGKILL)
        return True

    def kill_and_restart(self) -> tuple[float, float, list[int]]:
        """Kill -9 the supervisor, wait for its workers to stop, start it again; the seconds
        its workers took to stop, the seconds the API was down, and the workers still running
        after :data:`ORPHANS_S` (killed)."""
        t0 = time.monotonic()
        workers = _workers(self.proc.pid)
        self.proc.kill()
        self.proc.wait()
        while any(map(_running, workers)) and time.monotonic() - t0 < ORPHANS_S:
            time.sleep(0.1)
        stopped = time.monotonic() - t0
        orphans = [w for w in workers if _running(w)]
        for w in orphans:  # else the restart cannot bind its port
            os.kill(w, signal.SIGKILL)
        self.proc = start_serve(
            self.env, self.port, self.log, self.workers, append=True, encoder=False
        )
        return stopped, time.monotonic() - t0, orphans
