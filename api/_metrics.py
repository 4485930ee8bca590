"""Prometheus metrics of one app (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0, 2.0, 5.0)


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
        self.rejected = Counter(
            "opendisco_api_rejected_total",
            "Requests refused before any work (rate limit, saturated: shed by admission).",
            ["reason"],
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "opendisco_api_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            registry=self.registry,
        )
        self.breaker_transitions = Counter(
            "opendisco_api_breaker_transitions_total",
            "Circuit breaker state changes.",
            ["to"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "opendisco_api_in_flight", "Requests admitted and working.", registry=self.registry
        )
        self.queued = Gauge(
            "opendisco_api_queued", "Requests waiting for admission.", registry=self.registry
        )
