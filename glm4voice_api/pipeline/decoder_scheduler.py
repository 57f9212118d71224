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

from glm4voice_api.models.speech_decoder.chunks import ChunkRequest, ChunkResult, Voice
from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.stream import DecoderStream, DecoderStreamConfig

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
        self.busy_seconds = 0.0
        """Wall time inside `decode_batch` (results come back on the CPU, so that includes the GPU work)."""

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
        # Work is re-prioritised before EVERY batch (not once per drained round), so a stream's first chunk
        # that arrives while many steady-state chunks are waiting goes into the very next pass.
        pending: list[tuple[_Job, ChunkRequest]] = []
        stopping = False
        while True:
            for item in self._drain(block=not pending and not stopping):
                if item is None:
                    stopping = True
                elif isinstance(item, _Job):
                    self._admit(item, pending)
                else:
                    self._close(item[1], pending)
            if pending:
                self._decode_next(pending)
            elif stopping:
                return

    def _drain(self, *, block: bool) -> list:
        items = [self._queue.get()] if block else []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _admit(self, job: _Job, pending: list) -> None:
        if job.stream.closed or job.future.cancelled():
            _settle(job, np.zeros(0, np.float32))
            return
        try:
            request = job.stream._ensure_stream().prepare(job.tokens, final=job.final)
        except Exception as exc:  # noqa: BLE001 - goes back to the caller
            _settle(job, exc=exc)
            return
        if request is None:
            _settle(job, np.zeros(0, np.float32))
        else:
            pending.append((job, request))

    def _close(self, stream: ScheduledStream, pending: list | None = None) -> None:
        if pending:
            for entry in [e for e in pending if e[0].stream is stream]:
                pending.remove(entry)
                _settle(entry[0], np.zeros(0, np.float32))
        stream._free()
        with self._lock:
            self._open -= 1

    def _pick(self, pending: list) -> list:
        """The most urgent chunk plus the next most urgent ones of similar length (up to max_batch).

        Urgency: a stream with no audio yet first, then the least audio buffered ahead of playback. Rows much
        longer than the most urgent one wait: a padded pass costs as much as its longest row, and a first
        chunk (10 tokens) must not be padded to a steady-state chunk's 100+ tokens of context.
        """
        now = time.monotonic()
        pending.sort(key=lambda jr: jr[0].stream.buffered_seconds(now))
        head_len = _row_tokens(pending[0][1])
        limit = 1.25 * head_len + 16
        batch = [pending[0]]
        for entry in pending[1:]:
            if len(batch) >= self.max_batch:
                break
            if _row_tokens(entry[1]) <= limit:
                batch.append(entry)
        for entry in batch:
            pending.remove(entry)
        return batch

    def _decode_next(self, pending: list) -> None:
        batch = self._pick(pending)
        start = time.perf_counter()
        try:
            results = self.decoder.decode_batch([r for _, r in batch])
        except Exception as exc:
            logger.exception("decoder batch failed")
            for job, _ in batch:
                _settle(job, exc=exc)
            return
        finally:
            self.busy_seconds += time.perf_counter() - start
        self.batches += 1
        self.chunks += len(batch)
        for (job, _), result in zip(batch, results, strict=True):
            self._commit(job, result, pending)

    def _commit(self, job: _Job, result: ChunkResult, pending: list) -> None:
        stream = job.stream._ensure_stream()
        samples = stream.commit(result)
        acc = getattr(job, "_acc", [])
        acc.append(samples)
        job._acc = acc  # type: ignore[attr-defined]
        nxt = stream.prepare(final=job.final)
        if nxt is not None:  # a job may hold several due chunks (a final flush): one per pass
            pending.append((job, nxt))
            return
        out = np.concatenate(acc) if acc else np.zeros(0, np.float32)
        if len(out) and job.stream.first_emit is None:
            job.stream.first_emit = time.monotonic()
        job.stream.emitted_samples += len(out)
        _settle(job, out)


def _row_tokens(request: ChunkRequest) -> int:
    return len(request.prompt_tokens) + len(request.tokens)


def _settle(job: _Job, result: np.ndarray | None = None, exc: BaseException | None = None) -> None:
    def apply() -> None:
        if job.future.done():
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    job.loop.call_soon_threadsafe(apply)


class DecoderPool:
    """Several `DecoderScheduler`s, one per device (`--audio-device all`: one per GPU), behind one interface.

    Why: with vLLM spread over several GPUs (tensor or data parallel), a single decoder would leave the other GPUs'
    share of the speech work undone. A new stream goes to the scheduler with the fewest open sessions, and stays
    there (its state lives on that device).
    """

    def __init__(self, schedulers: list[DecoderScheduler]) -> None:
        if not schedulers:
            raise ValueError("a decoder pool needs at least one scheduler")
        self.schedulers = schedulers
        self.decoder = schedulers[0].decoder  # voice creation and introspection use the first device's model
        self.sample_rate = schedulers[0].sample_rate

    def start(self) -> None:
        for scheduler in self.schedulers:
            scheduler.start()

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.schedulers))

    def open_stream(self, voice: Voice | None = None) -> ScheduledStream:
        return min(self.schedulers, key=DecoderScheduler.active_streams).open_stream(voice)

    def active_streams(self) -> int:
        return sum(s.active_streams() for s in self.schedulers)

    @property
    def batches(self) -> int:
        return sum(s.batches for s in self.schedulers)

    @property
    def chunks(self) -> int:
        return sum(s.chunks for s in self.schedulers)

    @property
    def busy_seconds(self) -> float:
        """Summed over devices (so it can exceed the wall time: the devices work in parallel)."""
        return sum(s.busy_seconds for s in self.schedulers)
