"""Prometheus metrics of one app (own registry, so several apps can live in one process).

Several uvicorn workers (``opendisco serve --workers N``) run with prometheus-client's
multiprocess mode: ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a directory of its own
run before the workers start, every worker's values live in files there, and
:meth:`Metrics.exposition` merges them, so ``/metrics`` answers for the whole server whichever
worker serves it (gauges: in flight, queued and the admission limit summed over live
workers, breaker state per live worker, what was dropped summed over every worker of the run).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from opendisco._holder import process_alive

__all__ = ["CONTENT_TYPE_LATEST", "MULTIPROC_ENV", "Metrics", "multiprocess_dir"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0, 2.0, 5.0)


def multiprocess_dir() -> str | None:
    """The multiprocess directory of this server run (None: a single process)."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "opendisco_api_request_seconds",
            "Request latency by route.",
            ["route", "method", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.degraded = Counter(
            "opendisco_api_degraded_total",
            "Answers served from the fallback, by surface and reason.",
            ["surface", "reason"],
            registry=self.registry,
        )
        self.source_errors = Counter(
            "opendisco_api_source_errors_total",
            "Live answers (degraded) one of whose candidate sources the engine did not answer "
            "whole (an error object in the _msearch, shards failed, timed out), by source.",
            ["surface", "source"],
            registry=self.registry,
        )
        self.recheck_dropped = Counter(
            "opendisco_api_recheck_dropped_total",
            "Items a served page dropped because MongoDB says they break a rule now (the "
            "engine's copy trails the store: sync lag, or no sync worker running), by rule.",
            ["rule"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "opendisco_api_rejected_total",
            "Requests refused before any work (rate limit, saturated: shed by admission, "
            "body_too_large, body_timeout, client_gone: its client left while it was queued; "
            "stopping: still running when the server's stop grace ended, answered 503).",
            ["reason"],
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "opendisco_api_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.breaker_transitions = Counter(
            "opendisco_api_breaker_transitions_total",
            "Circuit breaker state changes.",
            ["to"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "opendisco_api_in_flight",
            "Requests admitted and working.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.concurrency_limit = Gauge(
            "opendisco_api_concurrency_limit",
            "Requests admission lets work at once now: the adaptive limit (shrinks while "
            "answers take longer than half the deadline, grows back as they speed up), "
            "api_max_concurrency when not adaptive.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.queued = Gauge(
            "opendisco_api_queued",
            "Requests waiting for admission.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )

        self.exposure_unwritten = Gauge(
            "opendisco_api_exposure_unwritten",
            "Served impressions not written to the exposure counters yet (pending the next "
            "flush, or kept after a failed one); bounded by exposure ids kept.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.exposure_dropped = Gauge(
            "opendisco_api_exposure_dropped",
            "Served impressions never counted: the pending ids were at their bound (every "
            "worker's since the server started, those that died included).",
            registry=self.registry,
            multiprocess_mode="sum",  # lost for good: a dead worker's stay counted
        )
        self.exposure_capped = Gauge(
            "opendisco_api_exposure_capped",
            "Ids on the engine's exposure cap list as last read (the fallback's refresh): the "
            "candidate queries fail past index.max_terms_count (65,536).",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.served_log_dropped = Gauge(
            "opendisco_api_served_log_dropped",
            "Served lists not logged: the served-list log's queue was full (every worker's "
            "since the server started, those that died included).",
            registry=self.registry,
            multiprocess_mode="sum",
        )

    def exposition(self) -> bytes:
        """The text format of every worker's metrics (this process's alone without
        multiprocess mode)."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        _drop_dead_gauges(Path(path))
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=path)
        return generate_latest(merged)

    @staticmethod
    def process_exited(pid: int) -> None:
        """Drop a finished worker's live gauges (multiprocess mode only)."""
        path = multiprocess_dir()
        if path is not None:
            _drop_gauges(Path(path), pid)


def _drop_gauges(path: Path, pid: int) -> None:
    """Worker ``pid``'s live gauges out of ``path`` (another worker may have removed them)."""
    for f in path.glob(f"gauge_live*_{pid}.db"):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def _drop_dead_gauges(path: Path) -> None:
    """The live gauges of the workers that died without stopping (killed with -9: uvicorn
    replaces them, nothing ran their :meth:`Metrics.process_exited`) out of ``path``: their
    last in-flight, queued, limit and breaker state were read as live ever after. Their
    counters and histograms stay, so the totals never go back."""
    pids = {int(f.stem.rsplit("_", 1)[1]) for f in path.glob("gauge_live*_*.db")}
    for pid in pids:
        if not process_alive(pid):
            _drop_gauges(path, pid)
