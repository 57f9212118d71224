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
        self.engine_aborted = Gauge(
            "glm4voice_engine_aborted_requests", "Engine requests aborted before finishing.", registry=self.registry
        )
        self.decoder_sessions = Gauge(
            "glm4voice_decoder_active_sessions", "Decoder sessions open (each frees on close).", registry=self.registry
        )
        self.first_audio = Histogram(
            "glm4voice_first_audio_seconds", "Time from request to the first audio bytes.", registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0),
        )  # fmt: skip

    def bind(self, *, active_requests: Callable[[], int], aborted_requests: Callable[[], int],
             decoder_sessions: Callable[[], int]) -> None:  # fmt: skip
        self.engine_active.set_function(active_requests)
        self.engine_aborted.set_function(aborted_requests)
        self.decoder_sessions.set_function(decoder_sessions)
