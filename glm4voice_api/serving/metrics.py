"""Prometheus metrics of one app instance (its own registry; vLLM's engine metrics live in the global one)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "glm4voice_requests", "HTTP requests by route and status.", ["route", "status"], registry=self.registry
        )
        self.engine_active = Gauge(
            "glm4voice_engine_active_requests", "Engine requests submitted and not finished.", registry=self.registry
        )
        self.first_audio = Histogram(
            "glm4voice_first_audio_seconds", "Time from request to the first audio bytes.", registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0),
        )  # fmt: skip

    def bind_engine(self, active_requests: Callable[[], int]) -> None:
        self.engine_active.set_function(active_requests)
