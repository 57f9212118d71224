"""Prometheus metrics of one app instance (its own registry; vLLM's engine metrics live in the global one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from glm4voice_api.pipeline.thread_cpu import thread_cpu_seconds
from glm4voice_api.serving.gc_heap import GcPauses


class _CallbackCounter(Collector):
    """A counter whose value another component keeps (it only grows), read at each scrape."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.read: Callable[[], float] = lambda: 0
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.read())


class _ThreadCPU(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        registry.register(self)
        self.elsewhere: Callable[[], dict[str, float]] = dict
        """Threads of vLLM's model process by role, prefixed `vllm_` (a hosted decoder reports them; else none)."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "glm4voice_thread_cpu_seconds",
            "CPU seconds of the server process's threads by role: main (the event loop under serve), decoder, "
            "engine (an in-process vLLM), tokenizer, other; with the decoder hosted in vLLM's model process, that "
            "process's threads as vllm_main (vLLM's step loop), vllm_decoder, ... Their rates show how hard each "
            "process's GIL is contended.",
            labels=["thread"],
        )
        for role, seconds in sorted((thread_cpu_seconds() | self.elsewhere()).items()):
            family.add_metric([role], seconds)
        yield family


class _GcPauseHistogram(Collector):
    """`GcPauses`' counts as a histogram, built at scrape time (its GC callback must not take a metrics lock)."""

    def __init__(self, pauses: GcPauses, registry: CollectorRegistry) -> None:
        self.pauses = pauses
        registry.register(self)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "glm4voice_gc_pause_seconds",
            "Each cyclic garbage collection's length, by generation (the whole process waits: it holds the GIL).",
            labels=["generation"],
        )
        for generation in sorted(self.pauses.by_generation):
            buckets, seconds = self.pauses.histogram(generation)
            family.add_metric([str(generation)], buckets, seconds)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "glm4voice_requests",
            "HTTP requests by route, status and tenant.",
            ["route", "status", "tenant"],
            registry=self.registry,
        )
        self.engine_active = Gauge(
            "glm4voice_engine_active_requests", "Engine requests submitted and not finished.", registry=self.registry
        )
        self.engine_aborted = _CallbackCounter(
            "glm4voice_engine_aborted_requests", "Engine requests aborted before finishing.", self.registry
        )
        self.decoder_sessions = Gauge(
            "glm4voice_decoder_active_sessions", "Decoder sessions open (each frees on close).", registry=self.registry
        )
        self.first_audio = Histogram(
            "glm4voice_first_audio_seconds",
            "Time from request to the first audio bytes.",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0),
        )
        # The first audio's parts before the decoder's own split (bench/suite_results.py): what a request spends
        # before its reply starts, and of that, its input audio (decoding and the speech tokenizer).
        stage_buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
        self.reply_start, self.audio_prepare = (
            Histogram(name, doc, registry=self.registry, buckets=stage_buckets)
            for name, doc in (
                (
                    "glm4voice_reply_start_seconds",
                    "Time from request to its reply's generation starting (admission wait, input audio, prompt).",
                ),
                (
                    "glm4voice_audio_input_prepare_seconds",
                    "Time to decode one input audio part and compute its speech tokens.",
                ),
            )
        )
        self.audio_in = Counter(
            "glm4voice_audio_input_seconds", "Seconds of input audio decoded.", registry=self.registry
        )
        self.audio_out = Counter(
            "glm4voice_audio_output_seconds", "Seconds of audio generated.", registry=self.registry
        )
        self.rtf = Histogram(
            "glm4voice_stream_rtf",
            "Real-time factor per audio stream: generation time over audio seconds (< 1: faster than playback).",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0),
        )
        self.active_streams = Gauge(
            "glm4voice_active_streams", "Streaming responses generating now.", registry=self.registry
        )
        self.admitted = Gauge(
            "glm4voice_admission_active", "Requests holding an admission slot (running).", registry=self.registry
        )
        self.queue_depth = Gauge(
            "glm4voice_admission_queue_depth", "Requests waiting for an admission slot.", registry=self.registry
        )
        self.admission_limit = Gauge(
            "glm4voice_admission_limit",
            "Requests admitted at once now (measured capacity on a GPU, else the configured limit; 0: unlimited).",
            registry=self.registry,
        )
        self.underruns = Counter(
            "glm4voice_decoder_underruns",
            "Audio chunks emitted after the stream's earlier audio had finished playing (a listener heard a gap).",
            registry=self.registry,
        )
        self.rejections = Counter(
            "glm4voice_rejections",
            "Requests refused or stopped by a limit, by reason (tenant_concurrency, "
            "tenant_rate, queue_full, queue_timeout, draining, first_audio_timeout, request_timeout, drain_abort).",
            ["reason"],
            registry=self.registry,
        )

        self.loop_lag = Histogram(
            "glm4voice_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 0.1 s (every request and stream waits that long too).",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.loop_stalls = Counter(
            "glm4voice_event_loop_stalls",
            "Times the event loop was blocked longer than log.slow_loop_s (each logged with the stack that held it).",
            registry=self.registry,
        )
        self.loop_cpu = Counter(
            "glm4voice_event_loop_cpu_seconds",
            "CPU seconds of the event loop's thread (its rate: the share of a core the loop holds, GIL included).",
            registry=self.registry,
        )
        self.solo_passes = _CallbackCounter(
            "glm4voice_decoder_solo_passes",
            "Decoder passes run with the LLM's next step held (a reply's first chunk while few streams are open).",
            self.registry,
        )
        self.thread_cpu = _ThreadCPU(self.registry)
        self.gc_pauses = GcPauses()
        _GcPauseHistogram(self.gc_pauses, self.registry)
        self.realtime_sessions = Gauge(
            "glm4voice_realtime_sessions", "Realtime WebSocket sessions open now.", registry=self.registry
        )
        self.voice_to_voice = Histogram(
            "glm4voice_realtime_voice_to_voice_seconds",
            "Realtime: from the end of the user's speech (VAD speech_stopped) to the first audio delta of the answer.",
            registry=self.registry,
            buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
        )

    def bind(
        self,
        *,
        active_requests: Callable[[], int],
        aborted_requests: Callable[[], int],
        decoder_sessions: Callable[[], int],
        model_process_threads: Callable[[], dict[str, float]] = dict,
        solo_passes: Callable[[], int] = int,
    ) -> None:
        self.engine_active.set_function(active_requests)
        self.solo_passes.read = solo_passes
        self.engine_aborted.read = aborted_requests
        self.decoder_sessions.set_function(decoder_sessions)
        self.thread_cpu.elsewhere = lambda: {f"vllm_{k}": v for k, v in model_process_threads().items()}

    def bind_admission(
        self, *, admitted: Callable[[], int], queued: Callable[[], int], limit: Callable[[], int]
    ) -> None:
        self.admission_limit.set_function(limit)
        self.admitted.set_function(admitted)
        self.queue_depth.set_function(queued)

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()
