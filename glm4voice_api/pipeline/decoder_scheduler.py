"""DecoderScheduler: one thread owns the speech decoder and batches the due chunks of many streams.

Why one owner: the flow + HiFT forward passes are the scarce resource (per-pass launch overhead dominates at batch
1 on a GPU), so chunks of many streams go through `decode_batch` together. Order: a stream's first chunk jumps the
queue (first-audio latency), then the stream with the least audio buffered ahead of its playback goes first (what
keeps many streams real time).

Streams are touched only by the worker thread (prepare, commit, close), so no stream state is shared across
threads; the event loop only enqueues work and awaits futures.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from glm4voice_api.models.decoder_stream import DecoderStream, DecoderStreamConfig
from glm4voice_api.models.speech_decoder import SpeechDecoder, Voice

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    stream: ScheduledStream
    tokens: list[int]
    final: bool
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)


class ScheduledStream:
    """One reply's decoder session, driven through the scheduler."""

    def __init__(self, scheduler: DecoderScheduler, voice: Voice | None) -> None:
        self._scheduler = scheduler
        self._voice = voice
        self._stream: DecoderStream | None = None  # created by the worker thread on first use
        self.emitted_samples = 0
        self.first_emit: float | None = None
        self.closed = False

    def buffered_seconds(self, now: float) -> float:
        """Audio emitted minus audio already played (assuming playback started at the first chunk)."""
        if self.first_emit is None:
            return -1.0  # no audio yet: most urgent
        return self.emitted_samples / self._scheduler.sample_rate - (now - self.first_emit)

    async def feed(self, tokens: list[int], *, final: bool = False) -> np.ndarray:
        """New 22.05 kHz samples once the schedule makes a chunk due (empty if none is due yet)."""
        if self.closed:
            raise RuntimeError("stream is closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._scheduler.submit(_Job(self, list(tokens), final, future, loop))
        return await future

    def close(self) -> None:
        """Free the session (on the worker thread); safe to call more than once and from any path."""
        if not self.closed:
            self.closed = True
            self._scheduler.submit_close(self)

    # Worker-thread side.
    def _ensure_stream(self) -> DecoderStream:
        if self._stream is None:
            self._stream = self._scheduler.decoder.open_stream(self._voice, self._scheduler.stream_config)
        return self._stream

    def _free(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class DecoderScheduler:
    def __init__(
        self, decoder: SpeechDecoder, stream_config: DecoderStreamConfig | None = None, *, max_batch: int = 16
    ) -> None:
        self.decoder = decoder
        self.stream_config = stream_config or DecoderStreamConfig()
        self.max_batch = max_batch
        self.sample_rate = decoder.sample_rate
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._open = 0
        self._lock = threading.Lock()
        self.batches = 0
        self.chunks = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="decoder-scheduler", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    def open_stream(self, voice: Voice | None = None) -> ScheduledStream:
        with self._lock:
            self._open += 1
        return ScheduledStream(self, voice)

    def active_streams(self) -> int:
        """Sessions opened and not yet freed (leak checks, metrics)."""
        with self._lock:
            return self._open

    def submit(self, job: _Job) -> None:
        self._queue.put(job)

    def submit_close(self, stream: ScheduledStream) -> None:
        self._queue.put(("close", stream))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            items = [item]
            while len(items) < 4 * self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this round, then stop
                    break
                items.append(nxt)
            jobs = [i for i in items if isinstance(i, _Job)]
            if jobs:
                self._decode(jobs)
            for i in items:
                if isinstance(i, tuple):
                    self._close(i[1])

    def _close(self, stream: ScheduledStream) -> None:
        stream._free()  # noqa: SLF001 - the scheduler owns its streams' state
        with self._lock:
            self._open -= 1

    def _decode(self, jobs: list[_Job]) -> None:
        now = time.monotonic()
        due = []
        for job in jobs:
            if job.stream.closed or job.future.cancelled():
                _settle(job, np.zeros(0, np.float32))
                continue
            try:
                request = job.stream._ensure_stream().prepare(job.tokens, final=job.final)  # noqa: SLF001
            except Exception as exc:  # noqa: BLE001 - goes back to the caller
                _settle(job, exc=exc)
                continue
            if request is None:
                _settle(job, np.zeros(0, np.float32))
            else:
                due.append((job, request))
        due.sort(key=lambda jr: jr[0].stream.buffered_seconds(now))
        # A job may hold several due chunks (a final flush); each round decodes one chunk per stream.
        while due:
            batch, due = due[: self.max_batch], due[self.max_batch :]
            try:
                results = self.decoder.decode_batch([r for _, r in batch])
            except Exception as exc:  # noqa: BLE001
                logger.exception("decoder batch failed")
                for job, _ in batch:
                    _settle(job, exc=exc)
                continue
            self.batches += 1
            self.chunks += len(batch)
            for (job, _), result in zip(batch, results, strict=True):
                self._commit(job, result, due)

    def _commit(self, job: _Job, result, due: list) -> None:  # noqa: ANN001
        stream = job.stream._ensure_stream()  # noqa: SLF001
        samples = stream.commit(result)
        acc = getattr(job, "_acc", [])
        acc.append(samples)
        job._acc = acc  # type: ignore[attr-defined]  # noqa: SLF001
        nxt = stream.prepare(final=job.final)
        if nxt is not None:
            due.append((job, nxt))
            return
        out = np.concatenate(acc) if acc else np.zeros(0, np.float32)
        if len(out) and job.stream.first_emit is None:
            job.stream.first_emit = time.monotonic()
        job.stream.emitted_samples += len(out)
        _settle(job, out)


def _settle(job: _Job, result: np.ndarray | None = None, exc: BaseException | None = None) -> None:
    def apply() -> None:
        if job.future.done():
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    job.loop.call_soon_threadsafe(apply)
