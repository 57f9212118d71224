"""One background thread that owns the speech tokenizer and batches concurrent requests.

A forward pass over 8 utterances costs little more than over one on a GPU, and the model is not thread-safe, so
every caller hands its waveform to a single thread that groups what has arrived into one `tokenize_batch` call.
Callers await an asyncio future that the thread settles through `loop.call_soon_threadsafe`; the event loop is
never blocked.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


class BatchTokenizer(Protocol):
    """What the worker needs from `glm4voice_api.models.speech_tokenizer.tokenizer.SpeechTokenizer`."""

    def tokenize_batch(self, items: list[tuple[np.ndarray, int]]) -> list[list[int]]: ...


class WorkerClosedError(RuntimeError):
    """The worker was closed (or its thread died) before the request ran."""


@dataclass(eq=False)
class _Request:
    waveform: np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[int]]
    # Set by the caller's task on cancellation; a plain bool is safe to read from the worker thread.
    cancelled: bool = field(default=False)


class SpeechTokenizerWorker:
    """Batches `tokenize` calls from any number of asyncio tasks into `tokenize_batch` on one owner thread.

    A batch closes when it holds `max_batch` requests or `max_wait_ms` after its first request arrived, whichever
    comes first. While a batch runs, new requests queue up and form the next batch without further waiting.

    The server's default wait is 0: a batch is what is queued when the thread gets free. A wait is added whole to
    a lone request's first audio (a spoken question's tokens are on its critical path), while under load requests
    batch anyway, arriving while the batch before them runs (a 3 s clip takes tens of ms on a GPU, which is far
    longer than a few ms of wait would gather).
    """

    def __init__(self, tokenizer: BatchTokenizer, *, max_batch: int = 8, max_wait_ms: float = 0.0) -> None:
        if max_batch < 1:
            msg = f"max_batch must be >= 1, got {max_batch}"
            raise ValueError(msg)
        self._tokenizer = tokenizer
        self._max_batch = max_batch
        self.set_max_wait_ms(max_wait_ms)
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        # Orders "check closed + enqueue" against "mark closed + enqueue the stop sentinel", so no request can
        # land behind the sentinel and wait forever.
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.busy_seconds = 0.0
        """Wall time spent in tokenizer passes (its results are on the CPU, so the GPU work is done)."""

    def set_max_wait_ms(self, max_wait_ms: float) -> None:
        """Change the wait (read once per batch, so the next batch uses it; bench/gpu_server.py compares waits)."""
        if not 0 <= max_wait_ms <= 1000:  # also NaN and inf (a queue get with an infinite timeout raises)
            msg = f"max_wait_ms must lie in [0, 1000], got {max_wait_ms}"
            raise ValueError(msg)
        self._max_wait_s = max_wait_ms / 1000.0

    def start(self) -> None:
        """Start the owner thread (idempotent)."""
        with self._lock:
            if self._closed:
                msg = "SpeechTokenizerWorker was closed; create a new one"
                raise WorkerClosedError(msg)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="speech-tokenizer", daemon=True)
                self._thread.start()

    async def tokenize(self, waveform_16k: np.ndarray) -> list[int]:
        """Token ids of one mono float32 16 kHz waveform; errors of this input are raised here only."""
        loop = asyncio.get_running_loop()
        request = _Request(waveform_16k, loop, loop.create_future())
        with self._lock:
            if self._closed or self._thread is None:
                msg = "SpeechTokenizerWorker is not running"
                raise WorkerClosedError(msg)
            self._queue.put(request)
        try:
            return await request.future
        except asyncio.CancelledError:
            request.cancelled = True
            raise

    async def close(self) -> None:
        """Finish the requests already queued, then stop the thread (awaits it without blocking the loop)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            while True:
                batch, stop = self._collect()
                live = [r for r in batch if not r.cancelled]
                try:
                    if live:
                        start = time.perf_counter()
                        self._process(live)
                        self.busy_seconds += time.perf_counter() - start
                except BaseException:
                    # The thread is going down (e.g. KeyboardInterrupt): its callers must not wait forever.
                    for request in live:
                        _deliver(request, exc=WorkerClosedError("SpeechTokenizerWorker thread died"))
                    raise
                if stop:
                    break
        finally:
            with self._lock:
                self._closed = True
            self._fail_queued()

    def _collect(self) -> tuple[list[_Request], bool]:
        """Block for the first request, then gather more until the batch is full or the wait is over."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self._max_wait_s
        while len(batch) < self._max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _process(self, batch: list[_Request]) -> None:
        try:
            results = self._tokenizer.tokenize_batch([(r.waveform, SAMPLE_RATE) for r in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller, never swallowed
            if len(batch) == 1:
                _deliver(batch[0], exc=exc)
                return
            # One bad input (or a batch too large for memory) must not fail its neighbours: rerun each alone so
            # every caller gets its own outcome.
            logger.warning("speech tokenizer batch of %d failed (%r); retrying one by one", len(batch), exc)
            for request in batch:
                if not request.cancelled:
                    self._process([request])
            return
        for request, tokens in zip(batch, results, strict=True):
            _deliver(request, result=tokens)

    def _fail_queued(self) -> None:
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                _deliver(request, exc=WorkerClosedError("SpeechTokenizerWorker closed before the request ran"))


def _deliver(request: _Request, *, result: list[int] | None = None, exc: BaseException | None = None) -> None:
    if request.cancelled:
        return
    try:
        request.loop.call_soon_threadsafe(_settle, request.future, result, exc)
    except RuntimeError:
        # The caller's loop is closed: nobody is waiting for this result any more.
        logger.debug("dropping a speech tokenizer result: its event loop is closed")


def _settle(future: asyncio.Future[list[int]], result: list[int] | None, exc: BaseException | None) -> None:
    # Runs on the caller's loop; the caller may have been cancelled between delivery and now.
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result if result is not None else [])
