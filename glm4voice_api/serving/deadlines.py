"""Time limits of one generation, and the drain's abort, around its event iterator; the audio it produced, metered.

`TimeLimits.bounded` runs each step of the underlying iterator under a deadline: the first audio
(`timeouts.first_audio_s`, spoken replies only, counted from the start of generation) and the whole request
(`timeouts.request_s`, counted from the start of its work: `TimeLimits.preparing` covers decoding and tokenizing
its audio, `bounded` the generation, under one deadline; time in the admission queue is bounded by
`admission.max_queue_wait_s` on its own). When
a deadline passes, or the drain aborts the request's lease, the step in progress is cancelled: the pipeline's
generators clean up as on a client disconnect (engine request aborted, decoder session freed) and `bounded` raises
the API error, which a stream reports as its error event and a non-streaming request as its response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from glm4voice_api.config import TimeoutSettings
from glm4voice_api.errors import APIError, timed_out
from glm4voice_api.request_context import current_request
from glm4voice_api.serving.metrics import Metrics

T = TypeVar("T")


class TimeLimits:
    def __init__(self, timeouts: TimeoutSettings, metrics: Metrics) -> None:
        self.timeouts = timeouts
        self.metrics = metrics

    @asynccontextmanager
    async def preparing(self) -> AsyncIterator[None]:
        """The work before generation (audio decoded and tokenized, ids and voices read) under the request's time
        limit and the drain's abort: its deadline starts now and the generation keeps it (`bounded`)."""
        loop = asyncio.get_running_loop()
        context = current_request()
        deadline = loop.time() + self.timeouts.request_s if self.timeouts.request_s else None
        if context is not None and context.deadline is None:
            context.deadline = deadline
        lease = context.lease if context is not None else None
        if lease is not None and lease.abort_error is not None:
            raise lease.abort_error
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                if lease is not None:
                    lease.watch(timeout)
                yield
        except TimeoutError:
            raise self._expired(lease, None, loop.time()) from None
        finally:
            if lease is not None:
                lease.unwatch(timeout)

    async def bounded(
        self,
        events: AsyncIterator[T],
        *,
        is_audio: Callable[[T], bool] | None = None,
        stream: bool = False,
    ) -> AsyncIterator[T]:
        """`events` under the request's time limits; `is_audio` tells the first audio (None: no first-audio limit)."""
        limits = self.timeouts
        loop = asyncio.get_running_loop()
        start = loop.time()
        context = current_request()
        total_at = start + limits.request_s if limits.request_s else None
        if context is not None and context.deadline is not None:
            total_at = context.deadline  # set when the request's preparation began
        first_at = start + limits.first_audio_s if limits.first_audio_s and is_audio else None
        lease = context.lease if context is not None else None
        if stream:
            self.metrics.active_streams.inc()
        try:
            while True:
                if lease is not None and lease.abort_error is not None:
                    raise lease.abort_error
                deadlines = [d for d in (total_at, first_at) if d is not None]
                timeout = asyncio.timeout_at(min(deadlines) if deadlines else None)
                try:
                    async with timeout:
                        if lease is not None:
                            lease.watch(timeout)  # entered: the drain can reschedule it to now
                        item = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise self._expired(lease, first_at, loop.time()) from None
                finally:
                    if lease is not None:
                        lease.unwatch(timeout)
                if first_at is not None and is_audio is not None and is_audio(item):
                    first_at = None
                yield item
        finally:
            if stream:
                self.metrics.active_streams.dec()
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    def _expired(self, lease: object, first_at: float | None, now: float) -> APIError:
        abort_error = getattr(lease, "abort_error", None)
        if abort_error is not None:
            self.metrics.reject("drain_abort")
            return abort_error
        if first_at is not None and now >= first_at:
            self.metrics.reject("first_audio_timeout")
            return timed_out(
                f"No audio was ready within the server's {self.timeouts.first_audio_s:g} s limit; the request was "
                "stopped. Retry later.",
                "first_audio_timeout",
            )
        self.metrics.reject("request_timeout")
        return timed_out(
            f"The reply was not finished within the server's {self.timeouts.request_s:g} s limit; the request was "
            "stopped. Retry later or ask for fewer tokens.",
            "request_timeout",
        )


class AudioMeter:
    """Seconds of audio a reply generated, and for streams its real-time factor: the time from the start of
    generation to the last audio, over the seconds of audio (< 1: the audio arrives faster than it plays)."""

    def __init__(self, metrics: Metrics, sample_rate: int, *, stream: bool) -> None:
        self.metrics = metrics
        self.sample_rate = sample_rate
        self.stream = stream
        self.started = time.monotonic()
        self.samples = 0
        self.last = self.started

    def add(self, n_samples: int) -> None:
        self.samples += n_samples
        self.last = time.monotonic()

    def done(self) -> None:
        seconds = self.samples / self.sample_rate
        if seconds <= 0:
            return
        self.metrics.audio_out.inc(seconds)
        if self.stream:
            self.metrics.rtf.observe((self.last - self.started) / seconds)
