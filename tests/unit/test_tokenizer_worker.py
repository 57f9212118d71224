"""SpeechTokenizerWorker: batching, cancellation, per-caller errors and shutdown, against a fake tokenizer."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from glm4voice_api.pipeline.tokenizer_worker import SpeechTokenizerWorker, WorkerClosedError


class FakeTokenizer:
    """Returns [len(waveform)] per item; records every batch; can be held inside a call by a gate."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.thread_ids: set[int] = set()

    def tokenize_batch(self, items: list[tuple[np.ndarray, int]]) -> list[list[int]]:
        self.thread_ids.add(threading.get_ident())
        self.batches.append([w.size for w, _ in items])
        self.entered.set()
        self.gate.wait(5.0)
        time.sleep(self.delay_s)
        if any(w.size == 0 for w, _ in items):
            msg = "empty waveform"
            raise ValueError(msg)
        assert all(rate == 16000 for _, rate in items)
        return [[w.size] for w, _ in items]


def wave(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.float32)


async def wait_entered(fake: FakeTokenizer) -> None:
    assert await asyncio.to_thread(fake.entered.wait, 5.0)
    fake.entered.clear()


@pytest.mark.asyncio
async def test_concurrent_calls_are_batched_and_routed() -> None:
    fake = FakeTokenizer(delay_s=0.02)
    worker = SpeechTokenizerWorker(fake, max_batch=4, max_wait_ms=20)
    worker.start()
    results = await asyncio.gather(*(worker.tokenize(wave(n)) for n in range(1, 11)))
    await worker.close()
    assert results == [[n] for n in range(1, 11)]
    assert max(len(b) for b in fake.batches) > 1
    assert all(len(b) <= 4 for b in fake.batches)
    assert sorted(n for b in fake.batches for n in b) == list(range(1, 11))
    assert len(fake.thread_ids) == 1
    assert threading.get_ident() not in fake.thread_ids


@pytest.mark.asyncio
async def test_without_a_wait_requests_arriving_during_a_batch_form_the_next() -> None:
    # The server's default (max_wait_ms 0): a lone request goes at once; those arriving while it runs batch.
    fake = FakeTokenizer()
    fake.gate.clear()
    worker = SpeechTokenizerWorker(fake, max_batch=8)
    worker.start()
    first = asyncio.ensure_future(worker.tokenize(wave(1)))
    await wait_entered(fake)  # running alone: nothing was waited for
    rest = [asyncio.ensure_future(worker.tokenize(wave(n))) for n in range(2, 6)]
    await asyncio.sleep(0.05)
    fake.gate.set()
    assert await first == [1] and await asyncio.gather(*rest) == [[n] for n in range(2, 6)]
    await worker.close()
    assert fake.batches == [[1], [2, 3, 4, 5]]


@pytest.mark.asyncio
async def test_the_wait_can_change_while_running() -> None:
    fake = FakeTokenizer()
    worker = SpeechTokenizerWorker(fake, max_batch=8, max_wait_ms=0)
    worker.start()
    # Read per batch: the next batch waits for the second request (1 s, the most: sent 50 ms later, even on a loaded CI).
    worker.set_max_wait_ms(1000)
    one = asyncio.ensure_future(worker.tokenize(wave(1)))
    await asyncio.sleep(0.05)
    assert await asyncio.gather(one, worker.tokenize(wave(2))) == [[1], [2]]
    await worker.close()
    assert fake.batches == [[1, 2]]
    with pytest.raises(ValueError, match="max_wait_ms"):
        worker.set_max_wait_ms(-1)


@pytest.mark.asyncio
async def test_cancelled_callers_are_dropped() -> None:
    fake = FakeTokenizer()
    fake.gate.clear()
    worker = SpeechTokenizerWorker(fake, max_batch=8, max_wait_ms=1)
    worker.start()
    running = asyncio.create_task(worker.tokenize(wave(1)))
    await wait_entered(fake)
    # While batch 1 runs, queue three more and cancel the middle one before it is picked up.
    queued = [asyncio.create_task(worker.tokenize(wave(n))) for n in (2, 3, 4)]
    await asyncio.sleep(0.01)
    queued[1].cancel()
    # The event loop stays responsive while the worker thread is busy.
    await asyncio.sleep(0.01)
    fake.gate.set()
    assert await running == [1]
    assert await queued[0] == [2]
    assert await queued[2] == [4]
    with pytest.raises(asyncio.CancelledError):
        await queued[1]
    assert fake.batches == [[1], [2, 4]]
    await worker.close()


@pytest.mark.asyncio
async def test_cancel_during_running_batch_keeps_neighbours() -> None:
    fake = FakeTokenizer()
    fake.gate.clear()
    worker = SpeechTokenizerWorker(fake, max_batch=2, max_wait_ms=1000)
    worker.start()
    a = asyncio.create_task(worker.tokenize(wave(5)))
    b = asyncio.create_task(worker.tokenize(wave(6)))
    await wait_entered(fake)
    a.cancel()
    fake.gate.set()
    assert await b == [6]
    with pytest.raises(asyncio.CancelledError):
        await a
    assert await worker.tokenize(wave(7)) == [7]
    assert fake.batches == [[5, 6], [7]]
    await worker.close()


@pytest.mark.asyncio
async def test_error_reaches_only_its_caller() -> None:
    fake = FakeTokenizer()
    worker = SpeechTokenizerWorker(fake, max_batch=3, max_wait_ms=1000)
    worker.start()
    results = await asyncio.gather(
        worker.tokenize(wave(3)), worker.tokenize(wave(0)), worker.tokenize(wave(8)), return_exceptions=True
    )
    await worker.close()
    assert results[0] == [3]
    assert isinstance(results[1], ValueError)
    assert results[2] == [8]
    assert fake.batches[0] == [3, 0, 8]


@pytest.mark.asyncio
async def test_close_finishes_queued_then_rejects() -> None:
    fake = FakeTokenizer()
    fake.gate.clear()
    worker = SpeechTokenizerWorker(fake, max_batch=1, max_wait_ms=0)
    with pytest.raises(WorkerClosedError):
        await worker.tokenize(wave(1))
    worker.start()
    calls = [asyncio.create_task(worker.tokenize(wave(n))) for n in (1, 2)]
    await wait_entered(fake)
    closing = asyncio.create_task(worker.close())
    await asyncio.sleep(0.01)
    fake.gate.set()
    await closing
    assert [await c for c in calls] == [[1], [2]]
    with pytest.raises(WorkerClosedError):
        await worker.tokenize(wave(3))
    with pytest.raises(WorkerClosedError):
        worker.start()
